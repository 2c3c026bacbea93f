"""The Python-backend detector's GPU and FP16 options: rendering here; the GPU run itself is bench/gpu.py on the GPU host."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import build_repo
from reference import iou
from yolotriton.build.repository import RepositoryError, RepositorySettings, model_configs, validate_repository
from yolotriton.serve.server import TritonServer
from yolotriton.build.spec import DetectorSpec, YoloHead

SPEC = DetectorSpec(416, 416, 80, heads=(YoloHead("head_0", ((10, 14),) * 3, 32, (13, 13)),))


def test_gpu_detector_config():
    det = model_configs(SPEC, RepositorySettings(detector_device="gpu"))[0][1]
    assert det.instance_kind == "KIND_GPU" and det.backend == "python"
    assert det.parameters["execution_providers"] == "CUDAExecutionProvider,CPUExecutionProvider"
    assert det.parameters["model_file"] == "model.onnx"
    cpu = model_configs(SPEC, RepositorySettings())[0][1]
    assert cpu.instance_kind == "KIND_CPU" and cpu.parameters["execution_providers"] == "CPUExecutionProvider"
    with pytest.raises(RepositoryError, match="options of --target python"):
        RepositorySettings(target="onnxruntime", detector_device="gpu")


@pytest.fixture(scope="module")
def fp16_repo(tmp_path_factory, photos):
    out = tmp_path_factory.mktemp("fp16") / "model_repository"
    assert build_repo.main(["--output", str(out), "--detector-precision", "fp16",
                            "--parity-images", *map(str, photos)]) == 0
    return out


def test_fp16_detector_is_gated_and_served(fp16_repo, server, photos):
    """FP16 ONNX (FP32 I/O) served by the same Python detector (ONNX Runtime runs it on CPU here too)."""
    cfg = validate_repository(fp16_repo)
    assert cfg["yolov4_detector"].parameters["model_file"].string_value == "model.fp16.onnx"
    assert (fp16_repo / "yolov4_detector" / "1" / "model.fp16.onnx").is_file()
    fp32 = grpcclient.InferenceServerClient(server.grpc_url)
    with TritonServer(fp16_repo) as s16:
        fp16 = grpcclient.InferenceServerClient(s16.grpc_url)
        for photo in photos[:4]:
            data = np.array([[photo.read_bytes()]], dtype=object)
            res = []
            for c in (fp32, fp16):
                inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
                inp.set_data_from_numpy(data)
                r = c.infer("yolov4", [inp])
                n = r.as_numpy("num_detections")[0, 0]
                res.append((r.as_numpy("boxes")[0, :n], r.as_numpy("scores")[0, :n], r.as_numpy("classes")[0, :n]))
            (b32, s32, c32), (b16, s16_, c16) = res
            for b, sc, c in zip(b32, s32, c32):
                if sc < 0.3:
                    continue  # near the threshold a detection may fall either side
                j = [k for k in range(len(c16)) if c16[k] == c]
                assert j and max(iou(b, b16[k]) for k in j) >= 0.9, photo.name
                assert min(abs(sc - s16_[k]) for k in j) <= 0.05, photo.name


def test_missing_model_file_is_caught(fp16_repo, tmp_path):
    import shutil

    repo = tmp_path / "r"
    shutil.copytree(fp16_repo, repo)
    (repo / "yolov4_detector" / "1" / "model.fp16.onnx").unlink()
    with pytest.raises(RepositoryError, match="model_file names 1/model.fp16.onnx, which is missing"):
        validate_repository(repo)
