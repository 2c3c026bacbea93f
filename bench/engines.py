#!/usr/bin/env python3
"""The detector's network engines side by side on one GPU, against the hardware bound, in one run.

  python bench/engines.py --model-dir DIR [--photos DIR] --batches 8,32,128 [--engines torch,torch-eager,ort]

DIR is a GPU build's detector folder (model.onnx, model.fp16.onnx, candidates.onnx, spec.json). Rows, images/s
with the input already on the GPU (a fixed device buffer), outputs left on the device, median of rounds:
- conv bound: the network's own convolutions (read from its ONNX at that batch: shapes, strides, pads, groups),
  each alone at cuDNN's benchmarked-best algorithm, FP16, NHWC, under torch; their times summed;
- torch: yolotriton.runtime.torch_engine (inductor-compiled FP16 channels-last, a CUDA graph), network + candidates;
- torch-eager: the same modules uncompiled, in a CUDA graph;
- ort: ONNX Runtime CUDA on model.fp16.onnx (+ candidates.onnx), IO binding + CUDA graph (bench/ceilings.py);
- ort-nhwc: the same with prefer_nhwc and EXHAUSTIVE, no graph (ONNX Runtime refuses to capture it);
- torch+FLAG[+FLAG]: the torch engine compiled with inductor config flags set (conv_1x1_as_mm, max_autotune, ...),
  or `static`: compiled for this batch alone (the served engine compiles one dynamic batch for all its buckets),
  or `cudnn`: convolutions with their bias and leaky ReLU as cuDNN-fused graphs (runtime/cudnn_fusion.py);
each with its ratio to the conv bound. With --photos: each compiled torch candidate's detections against ONNX
Runtime's FP32 model on the CPU, by the build's FP16 gate rule (runtime/gate.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ceilings import median_rate  # noqa: E402  (rounds of back-to-back calls, one synchronize each)


def torch_version() -> str:
    try:
        import torch

        return f"{torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
    except ImportError:
        return "missing"


PROFILE = False


def conv_shapes(model_path: str, batch: int) -> list[dict]:
    """Every Conv of the network at `batch`: input shape (padding applied), weight shape, stride, dilation, group."""
    import onnx

    from yolotriton.runtime.torch_engine import static_onnx

    model = onnx.shape_inference.infer_shapes(static_onnx(model_path, batch))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        n, c, h, w = shapes[node.input[0]]
        pads = a.get("pads", [0, 0, 0, 0])
        convs.append({"input": [n, c, h + pads[0] + pads[2], w + pads[1] + pads[3]], "weight": inits[node.input[1]],
                      "stride": a.get("strides", [1, 1]), "dilation": a.get("dilations", [1, 1]),
                      "groups": a.get("group", 1)})
    return convs


def conv_bound(model_path: str, batch: int, seconds: float = 0.3) -> dict:
    import torch

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.benchmark_limit = 0  # every algorithm cuDNN offers, not its first 10
    total, flops = 0.0, 0.0
    convs = conv_shapes(model_path, batch)
    for c in convs:
        x = torch.randn(c["input"], device="cuda", dtype=torch.half).to(memory_format=torch.channels_last)
        w = torch.randn(c["weight"], device="cuda", dtype=torch.half).to(memory_format=torch.channels_last)
        step = lambda: torch.nn.functional.conv2d(x, w, None, c["stride"], 0, c["dilation"], c["groups"])
        for _ in range(3):
            step()
        per_call = 1.0 / median_rate(step, torch.cuda.synchronize, 1, seconds)
        total += per_call
        o = c["weight"]
        flops += 2 * batch * o[0] * o[1] * o[2] * o[3] * (c["input"][2] // c["stride"][0]) * (c["input"][3] // c["stride"][1])
    return {"images_per_s": batch / total, "convs": len(convs), "tflops": flops / total / 1e12}


ENGINE_OPTIONS = ("static", "cudnn")  # torch+NAME options that are the engine's own, not inductor config flags


def engine_kwargs(options) -> dict:
    return {"dynamic": "static" not in options, "fuse": "cudnn" if "cudnn" in options else "inductor"}


@contextmanager
def inductor_options(options=()):
    """Inductor config flags (e.g. conv_1x1_as_mm, max_autotune) set to True while a candidate compiles and runs.
    Each candidate compiles alone (torch._dynamo.reset): a cache shared by several hits dynamo's recompile limit (8)."""
    import torch._dynamo
    import torch._inductor.config as inductor

    torch._dynamo.reset()

    options = [o for o in options if o not in ENGINE_OPTIONS]
    saved = {k: getattr(inductor, k) for k in options}
    try:
        for k in options:
            setattr(inductor, k, True)
        yield
    finally:
        for k, v in saved.items():
            setattr(inductor, k, v)


def torch_rate(model_dir: Path, batch: int, compiled: bool = True, options=(), half: bool = True,
               seconds: float = 1.5) -> dict:
    """The torch engine alone at `batch` (network + candidates, one CUDA graph), its input already on the GPU.
    options: inductor config flags set for this row (e.g. conv_1x1_as_mm)."""
    import torch

    from yolotriton.runtime.torch_engine import TorchEngine

    with inductor_options(options):
        t = time.perf_counter()
        candidates = model_dir / "candidates.onnx"
        engine = TorchEngine(str(model_dir / "model.onnx"), str(candidates) if candidates.is_file() else None,
                             max_batch=batch, batches=[batch], compile=compiled, half=half,
                             log=print, **engine_kwargs(options))
        build_s = time.perf_counter() - t
        slot = engine.slot(batch)
        slot.input.uniform_()
        rate = median_rate(slot.run, engine.torch_stream.synchronize, batch, seconds)
        if PROFILE:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    slot.run()
                engine.torch_stream.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    return {"images_per_s": rate, "build_s": round(build_s, 1), "engine": engine.providers[0]}


def ort_rate(model_dir: Path, batch: int, nhwc: bool, seconds: float = 1.5) -> dict:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"error": "no CUDAExecutionProvider"}
    if not nhwc:
        import ceilings

        rows = ceilings.network_ceiling(str(model_dir / "model.fp16.onnx"), [batch],
                                        candidates=str(model_dir / "candidates.onnx"), log=lambda *a: None)
        return {"images_per_s": rows[0]["images_per_s"]} if rows and "images_per_s" in rows[0] else {"error": str(rows)}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    cuda = {"prefer_nhwc": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    sess = ort.InferenceSession(str(model_dir / "model.fp16.onnx"), opts, providers=[("CUDAExecutionProvider", cuda)])
    inp = sess.get_inputs()[0]
    x = ort.OrtValue.ortvalue_from_numpy(np.random.rand(batch, *inp.shape[1:]).astype(np.float32), "cuda", 0)
    b = sess.io_binding()
    b.bind_ortvalue_input(inp.name, x)
    for o in sess.get_outputs():
        b.bind_output(o.name, "cuda", 0)
    step = lambda: sess.run_with_iobinding(b)
    return {"images_per_s": median_rate(step, b.synchronize_outputs, batch, seconds)}


def accuracy(model_dir: Path, photos: Path, options=()) -> dict:
    """The torch engine (FP16, compiled with the candidate's inductor options) against ONNX Runtime's FP32 model on
    the CPU, both decoded by the served Decoder, by the build's FP16 gate rule (runtime/gate.py)."""
    import onnxruntime as ort

    from yolotriton.runtime.gate import match_detections
    from yolotriton.runtime.detections import Decoder
    from yolotriton.runtime.images import preprocess_files
    from yolotriton.runtime.torch_engine import TorchEngine

    decoder = Decoder(json.loads((model_dir / "spec.json").read_text()), from_candidates=True)
    batch = preprocess_files(sorted(photos.glob("*.jpg")), decoder.width, decoder.height)
    meta = decoder.network_meta(len(batch))
    net = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    cands = ort.InferenceSession(str(model_dir / "candidates.onnx"), providers=["CPUExecutionProvider"])
    heads = dict(zip([o.name for o in net.get_outputs()], net.run(None, {net.get_inputs()[0].name: batch})))
    ref = dict(zip([o.name for o in cands.get_outputs()], cands.run(None, heads)))
    with inductor_options(options):
        engine = TorchEngine(str(model_dir / "model.onnx"), str(model_dir / "candidates.onnx"), max_batch=len(batch),
                             log=print, **engine_kwargs(options))
        got = dict(zip(engine.output_names, engine([batch])))
    report = match_detections(decoder(ref, meta, 0.25, 0.45, 100), decoder(got, meta, 0.25, 0.45, 100))
    return {"images": report.images, "matched": report.matched, "worst_iou": round(report.worst_iou, 4),
            "worst_score_delta": round(report.worst_score_delta, 4), "problems": report.problems[:5]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--photos", type=Path)
    ap.add_argument("--batches", default="8,32,128")
    ap.add_argument("--engines", default="bound,torch,torch-eager,ort,ort-nhwc")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--profile", action="store_true", help="print the top kernels of each torch row (torch.profiler)")
    args = ap.parse_args()
    global PROFILE
    PROFILE = args.profile
    names = args.engines.split(",")  # a name listed twice is timed twice (a noise check): its columns "torch", "torch#2"
    engines = [n if n not in names[:i] else f"{n}#{names[:i].count(n) + 1}" for i, n in enumerate(names)]
    rows = []
    if args.photos:  # each compiled torch candidate by the gate rule: a faster row counts only if it passes
        for name in [n for n in dict.fromkeys(names) if n == "torch" or n.startswith("torch+")]:
            try:
                acc = accuracy(args.model_dir, args.photos, options=name.split("+")[1:])
            except Exception as e:  # noqa: BLE001 -- a candidate that fails is a row that says why
                acc = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print("accuracy", name, json.dumps(acc), flush=True)
            rows.append({"accuracy": acc, "engine": name})
    for b in [int(x) for x in args.batches.split(",")]:
        row = {"batch": b}
        for column in engines:
            name = column.split("#")[0]
            try:
                if name == "bound":
                    row[column] = conv_bound(str(args.model_dir / "model.onnx"), b)
                elif name.startswith("torch"):
                    kind, *options = name.split("+")
                    row[column] = torch_rate(args.model_dir, b, compiled=kind == "torch", options=options)
                else:
                    row[column] = ort_rate(args.model_dir, b, nhwc=name == "ort-nhwc")
            except Exception as e:  # noqa: BLE001 -- a candidate that fails is a row that says why
                row[column] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(b, column, json.dumps(row[column]), flush=True)
        bound = row.get("bound", {}).get("images_per_s")
        if bound:
            for name in engines:
                if "images_per_s" in row[name]:
                    row[name]["of_bound"] = round(row[name]["images_per_s"] / bound, 3)
        rows.append(row)
    print("\n| batch | " + " | ".join(engines) + " |\n|---|" + "---|" * len(engines))
    for row in rows:
        if "batch" in row:
            cells = [f"{row[n]['images_per_s']:,.0f} ({row[n].get('of_bound', 1):.2f})" if "images_per_s" in row[n]
                     else row[n].get("error", "?")[:40] for n in engines]
            print(f"| {row['batch']} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
