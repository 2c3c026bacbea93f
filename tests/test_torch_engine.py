"""The detector's torch engine (runtime/torch_engine.py) and the choice between engines (runtime/engine.py).

Here (no torch, no GPU): asked for torch where it cannot load, the model gets ONNX Runtime and one log line that
says why. On the GPU host (scripts/gpu_host_run.sh tests, torch from the image): the torch engine's detections
equal ONNX Runtime's FP32 ones by the build's FP16 gate rule on the photos, and a batch of n images gives the same
outputs whatever bucket it runs in and however it is split into requests.
"""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import onnxruntime as ort
import pytest

from test_ort_engine import _plain, batch, detector_files  # noqa: F401 (fixtures)
from yolotriton.runtime.gate import match_detections
from yolotriton.build.repository import spec_path
from yolotriton.runtime.detections import Decoder
from yolotriton.runtime.engine import open_engine
from yolotriton.runtime.ort_engine import OrtEngine

torch_gpu = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx2torch") is None
    or "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs torch, onnx2torch and a GPU (the GPU host: scripts/gpu_host_run.sh tests)")


def test_torch_asked_where_it_cannot_load_gives_onnx_runtime_and_says_why(built_repo, batch, monkeypatch):
    folder = next(built_repo.glob("*_detector/1"))
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a host without torch: `import torch` fails
    monkeypatch.delitem(sys.modules, "yolotriton.runtime.torch_engine", raising=False)
    lines = []
    engine = open_engine("torch", str(folder), "model.onnx", None, max_batch=8, log=lines.append)
    assert isinstance(engine, OrtEngine) and len(lines) == 1, lines
    assert lines[0].startswith("engine torch unavailable here") and "ONNX Runtime runs the network" in lines[0]
    for got, want in zip(engine([batch]), _plain(str(folder / "model.onnx"), None, batch)):
        np.testing.assert_array_equal(got, want)


def test_unknown_engine_is_refused(detector_files):
    with pytest.raises(ValueError, match="expected one of ort, torch"):
        open_engine("tensorrt", "/nowhere", max_batch=8)


@torch_gpu
def test_torch_engine_detections_equal_onnx_runtime_fp32_by_the_gate_rule(built_repo, batch):
    from yolotriton.runtime.torch_engine import TorchEngine

    folder = next(built_repo.glob("*_detector/1"))
    spec = json.loads(spec_path(built_repo).read_text())
    cand = folder / "candidates.onnx"
    if not cand.is_file():
        pytest.skip("the repository under test decodes in the postprocess (no candidates.onnx)")
    decoder = Decoder(spec, from_candidates=True)
    meta = decoder.network_meta(len(batch))
    ref = dict(zip(decoder.output_names, _plain(str(folder / "model.onnx"), str(cand), batch)))
    engine = TorchEngine(str(folder / "model.onnx"), str(cand), max_batch=len(batch))
    got = dict(zip(engine.output_names, engine([batch])))
    report = match_detections(decoder(ref, meta, 0.25, 0.45, 100), decoder(got, meta, 0.25, 0.45, 100))
    assert report.ok and report.matched >= 10, report


@torch_gpu
def test_torch_engine_outputs_do_not_depend_on_the_bucket_or_the_split(built_repo, detector_files, batch):
    from yolotriton.runtime.torch_engine import TorchEngine

    model, cand = detector_files
    decoder = Decoder(json.loads(spec_path(built_repo).read_text()), from_candidates=True)
    meta = decoder.network_meta(len(batch))
    engine = TorchEngine(model, cand, max_batch=8)  # buckets 2, 4, 8
    whole = decoder(dict(zip(engine.output_names, [o.copy() for o in engine([batch])])), meta, 0.25, 0.45, 100)
    for split in ([1], [3], [2, 3], [1, 4, 2], [5, 3]):
        n = sum(split)
        bounds = np.cumsum([0, *split])
        got = engine([batch[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        assert all(g.shape[0] == n for g in got)
        part = decoder(dict(zip(engine.output_names, got)), meta[:n], 0.25, 0.45, 100)
        report = match_detections(tuple(x[:n] for x in whole), part, max_score_delta=0.01, min_iou=0.99)
        assert report.ok, (split, report)


@torch_gpu
def test_torch_engine_passes_the_load_gate_on_this_gpu(built_repo):
    """What a GPU instance does at load (open_engine, cuda): the torch engine on the build's gate photos, held to the
    FP32 ONNX's detections; it serves (no fallback to ONNX Runtime) and says it passed, in one line."""
    from yolotriton.runtime.gate import GATE_FILE

    folder = next(built_repo.glob("*_detector/1"))
    if not (folder / GATE_FILE).is_file() or not (folder / "candidates.onnx").is_file():
        pytest.skip("the repository under test has no load gate or decodes in the postprocess (a CPU build)")
    lines = []
    engine = open_engine("torch", str(folder), "model.fp16.onnx", "candidates.onnx", max_batch=8, cuda=True,
                         log=lines.append)
    assert engine.name == "torch", lines
    assert [line for line in lines if line.startswith("engine torch passes the accuracy gate")], lines


def test_engine_auto_is_torch_for_a_gpu_detector_that_decodes_raw_heads():
    import dataclasses

    from test_gpu_preprocess import SPEC
    from yolotriton.build.repository import RepositoryError, RepositorySettings, model_configs, resolve_engine

    gpu = RepositorySettings(detector_device="gpu", decode="detector")
    assert resolve_engine("auto", gpu, SPEC) == "torch"
    assert resolve_engine("auto", RepositorySettings(detector_device="gpu"), SPEC) == "ort"  # heads to the postprocess
    assert resolve_engine("auto", RepositorySettings(), SPEC) == "ort"  # the CPU
    assert resolve_engine("auto", gpu, dataclasses.replace(SPEC, per_image=True)) == "ort"
    assert resolve_engine("ort", gpu, SPEC) == "ort"
    with pytest.raises(RepositoryError, match="needs --target python and --detector-device gpu"):
        RepositorySettings(engine="torch")
    with pytest.raises(RepositoryError, match="expected one of ort, torch"):
        RepositorySettings(engine="tensorrt")
    assert model_configs(SPEC, dataclasses.replace(gpu, engine="torch"))[0][1].parameters["engine"] == "torch"

@torch_gpu
@pytest.mark.skipif(importlib.util.find_spec("cudnn") is None, reason="needs nvidia-cudnn-frontend (the GPU host)")
def test_cudnn_fused_convolutions_keep_the_detections_and_fuse_some(built_repo, batch):
    """fuse="cudnn": each conv + bias + leaky ReLU as one cuDNN graph where cuDNN has a faster plan that agrees with
    torch's own ops. The detections still equal the FP32 ONNX's by the gate rule, and at least one shape was fused
    (else this option would measure the unfused engine under another name)."""
    from yolotriton.runtime import cudnn_fusion
    from yolotriton.runtime.torch_engine import TorchEngine

    folder = next(built_repo.glob("*_detector/1"))
    cand = folder / "candidates.onnx"
    if not cand.is_file():
        pytest.skip("the repository under test decodes in the postprocess (no candidates.onnx)")
    decoder = Decoder(json.loads(spec_path(built_repo).read_text()), from_candidates=True)
    meta = decoder.network_meta(len(batch))
    ref = dict(zip(decoder.output_names, _plain(str(folder / "model.onnx"), str(cand), batch)))
    engine = TorchEngine(str(folder / "model.onnx"), str(cand), max_batch=len(batch), fuse="cudnn")
    got = dict(zip(engine.output_names, engine([batch])))
    report = match_detections(decoder(ref, meta, 0.25, 0.45, 100), decoder(got, meta, 0.25, 0.45, 100))
    assert report.ok and report.matched >= 10, report
    fused = [p for p in cudnn_fusion.PLANS.plans.values() if not isinstance(p, str)]
    assert fused, engine.providers
