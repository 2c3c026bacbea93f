"""The accuracy gate where the model loads (runtime/gate.py): a GPU build stores its parity photos and the FP32 ONNX's
detections on them (gate.npz), and the engine that will serve is checked against them before the model serves.

Here the engine is ONNX Runtime on the CPU, through open_engine with the gate on (on a GPU instance it is on by
default, for the torch engine and ONNX Runtime CUDA alike: scripts/gpu_host_run.sh tests). The failing engine is a
real one running a model whose first convolution was changed after the build; torch failing gives ONNX Runtime.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import build_repo
from yolotriton.runtime.engine import open_engine
from yolotriton.runtime.gate import GATE_FILE, GateFailed


@pytest.fixture(scope="module")
def gpu_folder(tmp_path_factory, default_model):
    """The detector folder of a default GPU build of yolov4-tiny (FP16 past its gate, heads decoded in the detector)."""
    out = tmp_path_factory.mktemp("gate") / "repo"
    assert build_repo.main(["--detector-device", "gpu", "--host-cores", "16", "--host-gpus", "1",
                            "--output", str(out)]) == 0
    return out / "yolov4_detector" / "1"


def test_a_gpu_build_stores_its_photos_and_the_fp32_detections(gpu_folder, built_repo, default_model):
    n = len(default_model.samples)  # the build's parity photos (the default model's two)
    with np.load(gpu_folder / GATE_FILE) as gate:
        assert gate["images"].dtype == np.float16 and gate["images"].shape == (n, 416, 416, 3)
        assert (gate["num"][:, 0] >= 2).all(), gate["num"]  # each photo shows objects: something to hold the engine to
        assert gate["boxes"].shape == (n, 100, 4) and gate["thresholds"].tolist() == pytest.approx([0.25, 0.45])
    assert not list(built_repo.glob(f"*/1/{GATE_FILE}"))  # the CPU build ran its own engine: nothing to check at load


def test_an_engine_that_agrees_loads_and_says_so(gpu_folder):
    lines = []
    engine = open_engine("ort", str(gpu_folder), "model.fp16.onnx", "candidates.onnx", max_batch=1, gate=True,
                         log=lines.append)
    assert engine.name == "ort"
    passed = [line for line in lines if "passes the accuracy gate" in line]
    assert len(passed) == 1 and " 0 detections matched" not in passed[0], lines


def _changed_copy(folder, dest):
    """The detector folder with its FP16 model's first convolution scaled by 1.3 after the build."""
    shutil.copytree(folder, dest)
    model = onnx.load(str(dest / "model.fp16.onnx"))
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weights = next(i for i in model.graph.initializer if i.name in first_conv.input[1:])
    changed = numpy_helper.to_array(weights) * np.asarray(1.3, numpy_helper.to_array(weights).dtype)
    weights.CopyFrom(numpy_helper.from_array(changed, weights.name))
    onnx.save(model, str(dest / "model.fp16.onnx"))
    return dest


def test_an_engine_that_changes_the_detections_does_not_load(gpu_folder, tmp_path):
    folder = _changed_copy(gpu_folder, tmp_path / "1")
    with pytest.raises(GateFailed) as failed:
        open_engine("ort", str(folder), "model.fp16.onnx", "candidates.onnx", max_batch=8, gate=True,
                    log=lambda line: None)
    message = str(failed.value)
    assert "\n" not in message and message.startswith("engine ort fails the accuracy gate against the FP32 ONNX")
    assert "not serving" in message and "--detector-precision fp32" in message
    # each finding names the run it is about: the FP32 ONNX's reference or the engine's own detections
    assert re.search(r"image \d+: (the FP32 ONNX's|engine ort's) class \d+ score", message), message
    # off the GPU the gate is off unless asked for: the build ran this engine itself
    assert open_engine("ort", str(folder), "model.fp16.onnx", "candidates.onnx", max_batch=8,
                       log=lambda line: None).name == "ort"


def test_torch_failing_the_gate_gives_onnx_runtime_checked_the_same_way(gpu_folder, tmp_path, monkeypatch):
    """Where the torch engine fails, one line and ONNX Runtime serves if it passes. The torch engine cannot run here
    (no GPU): FakeTorchEngine is ONNX Runtime on the changed model under torch's name; the fallback is the real one."""
    import yolotriton.runtime.engine as engines

    changed = _changed_copy(gpu_folder, tmp_path / "1")
    real_open = engines._open

    class FakeTorchEngine:
        name = "torch"

        def __init__(self, **kw):
            self.inner = real_open("ort", str(changed), "model.fp16.onnx", "candidates.onnx", **kw)
            self.output_names, self.max_batch = self.inner.output_names, self.inner.max_batch

        def __call__(self, parts):
            return self.inner(parts)

    monkeypatch.setattr(engines, "_open", lambda kind, *a, **kw: FakeTorchEngine(**kw) if kind == "torch"
                        else real_open(kind, *a, **kw))
    lines = []
    engine = open_engine("torch", str(gpu_folder), "model.fp16.onnx", "candidates.onnx", max_batch=8, gate=True,
                         log=lines.append)
    assert engine.name == "ort" and len(lines) == 2, lines
    assert lines[0].startswith("engine torch fails the accuracy gate") and lines[0].endswith(
        "ONNX Runtime runs the network instead"), lines
    assert lines[1].startswith("engine ort passes the accuracy gate"), lines
