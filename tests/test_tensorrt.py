"""The TensorRT target: everything that needs no TensorRT runs here; a real build runs only where TensorRT and a GPU exist."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import build_repo
from fake_tensorrt import FakeTensorRT
from yolotriton.build import plan
from yolotriton.runtime.images import preprocess_files
from yolotriton.build.plan import (PlanError, PlanOptions, build_plan, check_plan, fp16_gate, profile_shapes, to_fp16)
from yolotriton.build.repository import RepositorySettings, validate_repository


@pytest.fixture(scope="module")
def docker_repo(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "model_repository"
    assert build_repo.main(["--output", str(out), "--target", "tensorrt", "--plan-builder", "docker",
                            "--max-batch-size", "4"]) == 0
    return out


def test_profile_matches_the_config(docker_repo):
    cfg = validate_repository(docker_repo, allow_pending_plan=True)
    det = cfg["yolov4_detector"]
    assert det.platform == "tensorrt_plan" and det.default_model_filename == "model.plan"
    assert det.instance_group[0].kind == det.instance_group[0].KIND_GPU
    shapes = profile_shapes(416, 416, det.max_batch_size)
    assert shapes["max"][0] == det.max_batch_size == cfg["yolov4"].max_batch_size == 4
    with pytest.raises(PlanError):
        profile_shapes(416, 416, 4, opt_batch=8)
    with pytest.raises(Exception, match="missing 1/model.plan"):
        validate_repository(docker_repo)  # without the pending-plan allowance the plan must exist


def test_rendered_trtexec_script_and_compose(docker_repo):
    script = (docker_repo / "build_plan.sh").read_text()
    for part in ("--onnx=/models/yolov4_detector/1/model.onnx", "--saveEngine=/models/yolov4_detector/1/model.plan",
                 "--minShapes=images:1x416x416x3", "--optShapes=images:4x416x416x3", "--maxShapes=images:4x416x416x3",
                 "--fp16", "--timingCacheFile=", "--memPoolSize=workspace:2048M", "nvcr.io/nvidia/tritonserver:$TAG",
                 'TAG="${TRITON_TAG:-24.10-py3}"', "/usr/src/tensorrt/bin/trtexec"):
        assert part in script, part
    assert subprocess.run(["bash", "-n", str(docker_repo / "build_plan.sh")]).returncode == 0
    compose = yaml.safe_load((docker_repo / "docker-compose.yml").read_text())
    svc = compose["services"]["triton"]
    assert svc["command"][:2] == ["tritonserver", "--model-repository=/models"]
    assert "--model-control-mode=none" in svc["command"]
    assert all(p.startswith("127.0.0.1:") for p in svc["ports"])
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in (docker_repo / "Dockerfile").read_text()
    # The serving image gets what the pre/postprocess import, at this project's pinned versions
    dockerfile = (docker_repo / "Dockerfile").read_text()
    root = Path(__file__).resolve().parent.parent
    pins = dict(line.split("==") for line in (root / "requirements.txt").read_text().splitlines() if "==" in line)
    for package in ("numpy", "opencv-python-headless", "simplejpeg"):
        assert f"{package}=={pins[package]}" in dockerfile, package
    # --target tensorrt puts the GPU preprocess in front of the plan: its packages go into the image too
    assert json.loads((docker_repo / "settings.json").read_text())["preprocess_device"] == "gpu"
    assert "nvidia-nvimgcodec-cu12==" in dockerfile and "onnxruntime-gpu==" in dockerfile
    assert "--cuda-memory-pool-byte-size=0:2147483648" in svc["command"]
    assert (docker_repo / "yolov4_preprocess" / "1" / "resize.onnx").is_file()


def test_fp16_conversion_keeps_io_types_and_passes_the_gate(built_repo, tmp_path, photos):
    fp32 = built_repo / "yolov4_detector" / "1" / "model.onnx"
    fp16 = to_fp16(fp32, tmp_path / "fp16.onnx")
    m = onnx.load(str(fp16))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in m.graph.initializer)
    spec = (built_repo / "yolov4_postprocess" / "1" / "spec.json").read_text()
    batch = preprocess_files(photos, 416, 416, "stretch")
    report = fp16_gate(fp32, fp16, spec, batch)
    assert report.ok, report.problems
    assert report.matched >= 20 and report.worst_iou >= 0.9 and report.worst_score_delta <= 0.05


def test_fp16_gate_rejects_a_damaged_model(built_repo, tmp_path, photos):
    """The gate must fail when FP16 really changes detections (here: one head's bias shifted)."""
    fp32 = built_repo / "yolov4_detector" / "1" / "model.onnx"
    fp16 = to_fp16(fp32, tmp_path / "fp16.onnx")
    m = onnx.load(str(fp16))
    last_conv = [n for n in m.graph.node if n.op_type == "Conv"][-1]
    bias = next(i for i in m.graph.initializer if i.name == last_conv.input[2])
    arr = onnx.numpy_helper.to_array(bias).copy() + np.float16(1.5)  # every logit of that head +1.5
    bias.CopyFrom(onnx.numpy_helper.from_array(arr, bias.name))
    onnx.save(m, str(tmp_path / "damaged.onnx"))
    spec = (built_repo / "yolov4_postprocess" / "1" / "spec.json").read_text()
    report = fp16_gate(fp32, tmp_path / "damaged.onnx", spec, preprocess_files(photos[:4], 416, 416, "stretch"))
    assert not report.ok


def test_build_plan_api_plumbing_with_fake_tensorrt(built_repo, tmp_path, monkeypatch):
    """FAKE TensorRT: checks which API calls and arguments the builder makes; builds nothing."""
    monkeypatch.setattr(plan, "gpu_identity", lambda: {"gpu": "FAKE GPU", "compute_capability": "9.0"})
    onnx_path = tmp_path / "model.onnx"
    shutil.copy(built_repo / "yolov4_detector" / "1" / "model.onnx", onnx_path)
    settings = RepositorySettings(target="tensorrt", max_batch_size=8)
    opts = PlanOptions(fp16=True, workspace_mib=1024, timing_cache=tmp_path / "cache")
    trt10 = FakeTensorRT("10.5.0")
    meta = build_plan(onnx_path, tmp_path / "model.plan", settings, lambda *_: None, opts, trt=trt10)
    assert trt10.called("create_network") == [("create_network", 0)]
    assert trt10.called("set_flag") == [("set_flag", trt10.BuilderFlag.FP16)]
    assert trt10.called("set_memory_pool_limit") == [("set_memory_pool_limit", trt10.MemoryPoolType.WORKSPACE, 1 << 30)]
    assert trt10.called("set_shape") == [("set_shape", "images", (1, 416, 416, 3), (8, 416, 416, 3), (8, 416, 416, 3))]
    assert trt10.called("parse_from_file") == [("parse_from_file", str(onnx_path))]
    assert (tmp_path / "cache").read_bytes() == b"FAKE-TIMING-CACHE"
    assert meta["precision"] == "fp16" and meta["profile"]["max"] == [8, 416, 416, 3]
    assert json.loads((tmp_path / "plan.json").read_text())["tensorrt_version"] == "10.5.0"
    trt10b = FakeTensorRT("10.5.0")
    build_plan(onnx_path, tmp_path / "model.plan", settings, lambda *_: None, opts, trt=trt10b)
    assert trt10b.called("create_timing_cache")[0][1] == b"FAKE-TIMING-CACHE"  # the cache is reused
    with pytest.raises(PlanError, match="too old"):
        build_plan(onnx_path, tmp_path / "model.plan", settings, lambda *_: None, opts, trt=FakeTensorRT("8.6.1"))


def test_plan_from_another_tensorrt_or_gpu_is_refused(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"tensorrt_version": "10.5.0", "gpu": "NVIDIA H100 80GB HBM3",
                                                    "compute_capability": "9.0"}))
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert check_plan(tmp_path, "10.5.0", h100)["tensorrt_version"] == "10.5.0"
    with pytest.raises(PlanError, match="built by TensorRT 10.5.0, this is 10.8.0"):
        check_plan(tmp_path, "10.8.0", h100)
    with pytest.raises(PlanError, match="built on NVIDIA H100"):
        check_plan(tmp_path, "10.5.0", {"gpu": "NVIDIA A10", "compute_capability": "8.6"})
    (tmp_path / "plan.json").unlink()
    with pytest.raises(PlanError, match="cannot tell which TensorRT"):
        check_plan(tmp_path, "10.5.0", h100)


def test_local_build_without_tensorrt_fails_fast_and_clearly(capsys, tmp_path):
    if plan.tensorrt_available():
        pytest.skip("TensorRT is installed here; the real-build test covers this machine")
    assert build_repo.main(["--output", str(tmp_path / "repo"), "--target", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "import tensorrt failed" in err and "--plan-builder docker" in err
    assert not (tmp_path / "repo").exists()


def test_onnxruntime_target_with_tensorrt_accelerator(tmp_path):
    from yolotriton.build.repository import model_configs, _render_config
    from yolotriton.build.spec import DetectorSpec, YoloHead

    spec = DetectorSpec(416, 416, 80, heads=(YoloHead("head_0", ((10, 14),) * 3, 32, (13, 13)),))
    det = model_configs(spec, RepositorySettings(target="onnxruntime", trt_accelerator=True))[0][1]
    text = _render_config(det)
    assert 'platform: "onnxruntime_onnx"' in text and "KIND_GPU" in text
    assert 'name : "tensorrt"' in text and 'key: "precision_mode" value: "FP16"' in text
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"


@pytest.mark.skipif(not (plan.tensorrt_available() and shutil.which("nvidia-smi")),
                    reason="needs `import tensorrt` and an NVIDIA GPU; neither exists on this project's machines")
def test_real_plan_build_and_serve_metadata(tmp_path):
    out = tmp_path / "model_repository"
    assert build_repo.main(["--output", str(out), "--target", "tensorrt"]) == 0
    meta = check_plan(out / "yolov4_detector" / "1")
    assert (out / "yolov4_detector" / "1" / "model.plan").stat().st_size > 1_000_000 and meta["precision"] == "fp16"


# ------------------------------------------------------------------ real builds: TensorRT-RTX (no GPU needed)

def _rtx():
    import tensorrt_rtx_bindings

    return tensorrt_rtx_bindings


def _config_io(repo):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((repo / "yolov4_detector" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    name = model_config_pb2.DataType.Name
    as_list = lambda ts: [{"name": t.name, "data_type": name(t.data_type), "shape": [-1, *t.dims]} for t in ts]
    return cfg.max_batch_size, {"inputs": as_list(cfg.input), "outputs": as_list(cfg.output)}


@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_rtx_builds_the_exported_onnx(built_repo, tmp_path, fp16):
    """A real TensorRT parser and builder (TensorRT-RTX, ahead of time, no GPU) on the default build's ONNX:
    FP32, and FP16 through a strongly typed network; the parsed network's I/O is what config.pbtxt declares."""
    max_batch, declared = _config_io(built_repo)
    meta = build_plan(built_repo / "yolov4_detector" / "1" / "model.onnx", tmp_path / "model.plan",
                      RepositorySettings(target="tensorrt", max_batch_size=max_batch), lambda *_: None,
                      PlanOptions(fp16=fp16), trt=_rtx())
    assert (tmp_path / "model.plan").stat().st_size > 1_000_000
    assert json.loads((tmp_path / "plan.json").read_text()) == meta
    assert meta["builder"] == "TensorRT-RTX" and meta["precision"] == ("fp16" if fp16 else "fp32")
    assert meta["profile"] == {"min": [1, 416, 416, 3], "opt": [max_batch, 416, 416, 3], "max": [max_batch, 416, 416, 3]}
    assert {"inputs": meta["inputs"], "outputs": meta["outputs"]} == declared
    if fp16:
        assert (tmp_path / "model.fp16.onnx").is_file()  # strong typing: the precision is the ONNX's
    with pytest.raises(PlanError, match="built by TensorRT-RTX"):
        check_plan(tmp_path, "10.5.0", {"gpu": "x", "compute_capability": "8.9"})  # never served by Triton


def test_tensorrt_rtx_reports_the_parsers_own_errors(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 416, 416, 3])
    y = helper.make_tensor_value_info("head_0", TensorProto.FLOAT, ["batch", 416, 416, 3])
    graph = helper.make_graph([helper.make_node("NoSuchYoloOp", ["images"], ["head_0"], domain="yolotriton.test")],
                              "broken", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("yolotriton.test", 1)])
    onnx.save(model, str(tmp_path / "broken.onnx"))
    settings = RepositorySettings(target="tensorrt", max_batch_size=4)
    with pytest.raises(PlanError, match="(?s)TensorRT-RTX could not parse broken.onnx:.*NoSuchYoloOp.*Plugin not found"):
        build_plan(tmp_path / "broken.onnx", tmp_path / "model.plan", settings, lambda *_: None,
                   PlanOptions(fp16=False), trt=_rtx())
    rank3 = helper.make_graph([helper.make_node("Identity", ["images"], ["head_0"])], "rank3",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 416, 3])],
                              [helper.make_tensor_value_info("head_0", TensorProto.FLOAT, ["batch", 416, 3])])
    onnx.save(helper.make_model(rank3, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "rank3.onnx"))
    with pytest.raises(PlanError, match="rank 3"):
        build_plan(tmp_path / "rank3.onnx", tmp_path / "model.plan", settings, lambda *_: None,
                   PlanOptions(fp16=False), trt=_rtx())
    assert not (tmp_path / "model.plan").exists()


def test_cli_tensorrt_rtx_check_build(tmp_path, capsys):
    """--plan-builder tensorrt-rtx: the repository for the serving host, after a real check build here."""
    out = tmp_path / "model_repository"
    assert build_repo.main(["--output", str(out), "--target", "tensorrt", "--plan-builder", "tensorrt-rtx",
                            "--max-batch-size", "4"]) == 0
    check = json.loads((out / "plan-check.json").read_text())
    assert check["builder"] == "TensorRT-RTX" and check["precision"] == "fp16"
    assert check["profile"]["max"] == [4, 416, 416, 3] and check["inputs"][0]["name"] == "images"
    assert (out / "build_plan.sh").is_file() and not (out / "yolov4_detector" / "1" / "model.plan").exists()
    assert "TensorRT-RTX 1.7" in capsys.readouterr().out


@pytest.mark.slow
def test_tensorrt_rtx_builds_official_yolov4_608(shared, tmp_path):
    """The full YOLOv4 (mish, SPP, 3 heads at 608) with random darknet-format weights, through the CLI."""
    from test_darknet import write_random_weights
    from yolotriton.build.darknet import build_graph, parse_cfg

    weights = tmp_path / "yolov4.weights"
    write_random_weights(build_graph(parse_cfg(shared / "yolov4.cfg")), weights, silent_heads=True)
    out = tmp_path / "model_repository"
    assert build_repo.main(["--cfg", str(shared / "yolov4.cfg"), "--weights", str(weights), "--names",
                            str(shared / "coco.names"), "--output", str(out), "--target", "tensorrt",
                            "--plan-builder", "tensorrt-rtx", "--fp32"]) == 0
    check = json.loads((out / "plan-check.json").read_text())
    assert [o["shape"] for o in check["outputs"]] == [[-1, 76, 76, 255], [-1, 38, 38, 255], [-1, 19, 19, 255]]
    assert check["profile"]["max"] == [8, 608, 608, 3]
