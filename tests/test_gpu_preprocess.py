"""GPU preprocess (--preprocess-device gpu) and instance sizing (--instances auto).

Here (no GPU): the resize graph against OpenCV on ONNX Runtime's CPU provider, the rendered configs,
the sizing rules and their CLI. On a GPU host (nvImageCodec + onnxruntime-gpu + cuda-bindings present,
run through scripts/gpu_host.sh): the GPU decode + resize against the CPU preprocess, and bad images.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import build_repo
from yolotriton.runtime import images
from yolotriton.runtime.gpu_images import Resizer, geometry
from yolotriton.build.repository import RepositoryError, RepositorySettings, auto_instances, model_configs
from yolotriton.build.resize_graph import write_resize_onnx
from yolotriton.build.spec import DetectorSpec, YoloHead

SPEC = DetectorSpec(416, 416, 80, heads=(YoloHead("head_0", ((10, 14),) * 3, 32, (13, 13)),))


def _has_gpu_stack() -> bool:
    if not all(importlib.util.find_spec(m) for m in ("nvidia.nvimgcodec", "cuda.bindings")):
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


gpu = pytest.mark.skipif(not _has_gpu_stack(), reason="needs an NVIDIA GPU with nvImageCodec, cuda-bindings and "
                                                      "onnxruntime-gpu (run on the GPU host: scripts/gpu_host.sh)")


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize("fill", [0.5, 0.0])
def test_resize_graph_matches_opencv(tmp_path, photos, mode, fill):
    """resize.onnx (run here by ONNX Runtime's CPU provider) gives OpenCV's pixels within 1/255 and the same meta."""
    write_resize_onnx(tmp_path / "resize.onnx", fill)
    rz = Resizer(str(tmp_path / "resize.onnx"), 416, 416, mode, device="cpu")
    # set, so that ONNX Runtime's per-run lookup of it does not throw (a tenth of the stubs' CPU on the H100)
    assert rz.run_options.get_run_config_entry("gpu_graph_id") == "-1"
    for photo in photos:
        rgb, wh = images.decode(photo.read_bytes(), 416, 416)
        rgb = np.array(rgb)
        ref, ref_meta = images.resize(rgb, 416, 416, mode, wh, fill=fill)
        out = np.full((1, 416, 416, 3), -1, np.float32)
        meta = rz.into(rgb, wh, out.ctypes.data)
        np.testing.assert_allclose(meta, ref_meta, rtol=1e-6)
        diff = np.abs(out[0] - ref)
        assert diff.max() <= 1.01 / 255, (photo.name, diff.max() * 255)  # OpenCV's fixed-point rounding
        assert diff.mean() <= 0.2 / 255, photo.name
        if mode == "letterbox" and wh[0] != wh[1]:
            assert (out[0, 0] == np.float32(fill)).all() or (out[0, :, 0] == np.float32(fill)).all()


def test_geometry_matches_cpu_meta():
    for w, h in ((768, 576), (352, 448), (1, 5000), (416, 416)):
        for mode in ("stretch", "letterbox"):
            sizes, pads, meta = geometry(w, h, 416, 416, mode)
            _, ref = images.resize(np.zeros((h, w, 3), np.uint8), 416, 416, mode)
            np.testing.assert_allclose(meta, ref, rtol=1e-6)
            assert sizes[2] + pads[1] + pads[5] == 416 and sizes[3] + pads[2] + pads[6] == 416


def test_gpu_preprocess_config():
    s = RepositorySettings(detector_device="gpu", preprocess_device="gpu")
    pre, det, _ = model_configs(SPEC, s)[0]
    assert pre.instance_kind == "KIND_GPU" and pre.parameters["device"] == "gpu"
    assert det.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"
    cpu_pre, cpu_det, _ = model_configs(SPEC, RepositorySettings(detector_device="gpu"))[0]
    assert cpu_pre.instance_kind == "KIND_CPU" and cpu_det.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"] == "yes"
    with pytest.raises(RepositoryError, match="needs the detector on the GPU"):
        RepositorySettings(preprocess_device="gpu")
    trt = model_configs(SPEC, RepositorySettings(target="tensorrt", preprocess_device="gpu"))[0][0]
    assert trt.instance_kind == "KIND_GPU"
    # the GPU stubs sleep while they wait for the GPU unless told to spin (docs/gpu-host.md has the measurements)
    assert pre.parameters["cuda_wait"] == det.parameters["cuda_wait"] == "block"
    spin = model_configs(SPEC, RepositorySettings(detector_device="gpu", preprocess_device="gpu", cuda_wait="spin"))
    assert spin[0][0].parameters["cuda_wait"] == spin[0][1].parameters["cuda_wait"] == "spin"
    with pytest.raises(RepositoryError, match="expected spin or block"):
        RepositorySettings(cuda_wait="yield")
    assert build_repo.parse_args(["--cuda-wait", "spin"]).cuda_wait == "spin"


def test_auto_instances_rules():
    assert auto_instances(2, 0, "cpu", False)[:3] == (2, 2, 1)  # the measured 2-core optimum (make tune)
    assert auto_instances(16, 0, "cpu", False)[:3] == (4, 8, 2)
    assert auto_instances(16, 1, "gpu", True)[:3] == (3, 3, 4)
    assert auto_instances(16, 1, "gpu", True, nms_in_detector=True)[:3] == (3, 4, 1)
    assert auto_instances(16, 1, "cpu", True)[:3] == (11, 3, 4)  # the CPU decode is the wall: most cores
    assert auto_instances(64, 4, "gpu", True)[:3] == (3, 3, 16)  # KIND_GPU counts are per GPU, on each of the 4
    assert auto_instances(16, 0, "cpu", True)[:3] == (4, 8, 2)  # a GPU detector without a GPU here: CPU rule
    assert "16 cores, 1 GPUs" in auto_instances(16, 1, "gpu", True)[3]


def test_instances_flags_reach_the_repository(built_repo, tmp_path, photos):
    """--instances/--host-*: plumbing from the CLI into config.pbtxt and settings.json (render only: rerender)."""
    from yolotriton.build.pipeline import copy_repository, rerender
    from yolotriton.build.repository import read_settings

    # counted for the layout the build resolved (after the import: only then are the model's heads known)
    counts = lambda args, s: tuple(build_repo.instance_counts(build_repo.parse_args(args), s).values())
    gpu = dict(detector_device="gpu", preprocess_device="gpu")
    two_models = RepositorySettings(**gpu, decode="detector", nms="detector")
    one_model = RepositorySettings(**gpu, decode="detector", nms="detector", preprocess_in="detector")
    host = ["--detector-device", "gpu", "--host-cores", "32", "--host-gpus", "2"]
    # KIND_GPU counts are per GPU (Triton makes `count` instances on each GPU), CPU counts are totals
    *got, why = counts(host + ["--postprocess-instances", "3"], two_models)
    assert got == [3, 4, 3] and "32 cores, 2 GPUs" in why and "--postprocess-instances 3" in why
    assert "the detector does NMS" in why and "on each of the 2 GPUs" in why
    *got, why = counts(host, one_model)
    assert got == [1, 12, 1] and "the detector is the whole pipeline" in why
    # a model whose outputs are already decoded keeps three models on the GPU, and gets their counts
    assert counts(host, RepositorySettings(**gpu))[:3] == (3, 3, 8)
    assert counts(["--instances", "5,1,2"], RepositorySettings())[:3] == (5, 1, 2)
    assert build_repo.main(["--instances", "5,x", "--output", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()
    repo = tmp_path / "r"
    copy_repository(built_repo, repo)
    rerender(repo, detector_device="gpu", preprocess_device="gpu", preprocess_instances=3, preprocess_in="preprocess",
             instances_reason="test")
    assert (repo / "yolov4_preprocess" / "1" / "resize.onnx").is_file()
    assert (repo / "yolov4_preprocess" / "1" / "runtime" / "gpu_images.py").is_file()
    config = (repo / "yolov4_preprocess" / "config.pbtxt").read_text()
    # no `gpus:` list: Triton makes `count` instances on every visible GPU, so --host-gpus 2 gives each GPU its own
    assert "count: 3 kind: KIND_GPU" in config and "gpus" not in config
    assert json.loads((repo / "settings.json").read_text())["instances_reason"] == "test"
    rerender(repo, preprocess_device="cpu")  # back to the CPU: the GPU files go
    assert not (repo / "yolov4_preprocess" / "1" / "resize.onnx").exists()
    assert read_settings(repo).preprocess_device == "cpu"


# ---------------------------------------------------------------------------------------- GPU host only

@gpu
def test_gpu_decode_and_resize_match_cpu(tmp_path, photos):
    from yolotriton.runtime.gpu_images import GpuPreprocessor

    write_resize_onnx(tmp_path / "resize.onnx", 0.5)
    for mode in ("stretch", "letterbox"):
        pre = GpuPreprocessor(str(tmp_path / "resize.onnx"), 416, 416, mode, images.DEFAULT_MAX_PIXELS,
                              images.DEFAULT_MAX_BYTES)
        blobs = [p.read_bytes() for p in photos]
        results = pre([blobs[:3], blobs[3:]])  # two requests, one decode call
        got = np.concatenate([np.asarray(r[0].numpy()) for r in results])
        metas = np.concatenate([r[1] for r in results])
        for i, data in enumerate(blobs):
            ref, ref_meta = images.preprocess_bytes(data, 416, 416, mode)
            np.testing.assert_allclose(metas[i], ref_meta, rtol=1e-6)
            diff = np.abs(got[i] - ref)
            # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few levels; detections
            # are compared with OpenCV's darknet by the end-to-end tests run against a GPU repository.
            assert diff.mean() <= 3 / 255, (photos[i].name, diff.mean() * 255)


@gpu
def test_gpu_bad_image_fails_only_its_request(tmp_path, photos):
    from yolotriton.runtime.gpu_images import GpuPreprocessor

    write_resize_onnx(tmp_path / "resize.onnx", 0.5)
    pre = GpuPreprocessor(str(tmp_path / "resize.onnx"), 416, 416, "stretch", 10_000_000, images.DEFAULT_MAX_BYTES)
    good = photos[0].read_bytes()
    import cv2

    png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    corrupt = good[:600] + bytes(200) + good[800:]  # header intact, entropy-coded data damaged
    results = pre([[good], [good[: len(good) // 2]], [b"\x00" * 10], [png], [corrupt], [good]])
    assert not isinstance(results[0], Exception) and not isinstance(results[5], Exception)
    assert isinstance(results[1], images.ImageError) and "truncated" in str(results[1])
    assert isinstance(results[2], images.ImageError)
    assert not isinstance(results[3], Exception)  # PNG: decoded on the CPU, resized on the GPU
    assert np.abs(results[3][0].numpy() - results[0][0].numpy()).mean() <= 3 / 255  # same photo, other decoder
    assert isinstance(results[4], (tuple, images.ImageError))  # decoded (damage tolerated) or refused, alone
