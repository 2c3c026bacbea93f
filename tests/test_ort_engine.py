"""ort_detector.OrtEngine, the Python detector's engine (model.onnx, then candidates.onnx if any).

Here: the CPU provider gives plain ONNX Runtime's outputs, whatever way the batch is split into
requests. On the GPU host (scripts/gpu_host_run.sh tests): the CUDA graphs (one per batch size) give
the eager CUDA runs' outputs while the batch size changes on every call and the requests' tensors
come from the host and from the device, which is what the dynamic batcher hands the detector.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from test_gpu_preprocess import SPEC, gpu
from yolotriton.runtime import images
from yolotriton.build.candidates_graph import write_candidates_onnx
from yolotriton.runtime.ort_engine import OrtEngine
from yolotriton.build.repository import spec_path
from yolotriton.build.spec import DetectorSpec


@pytest.fixture(scope="module")
def detector_files(built_repo, tmp_path_factory):
    """(model.onnx, candidates.onnx) of the built repository (candidates written here if it has none)."""
    det = next(built_repo.glob("*_detector/1"))
    cand = det / "candidates.onnx"
    if not cand.exists():
        spec = DetectorSpec.from_json(spec_path(built_repo).read_text())
        cand = tmp_path_factory.mktemp("cand") / "candidates.onnx"
        write_candidates_onnx(cand, spec)
    return str(det / "model.onnx"), str(cand)


@pytest.fixture(scope="module")
def batch(photos) -> np.ndarray:
    """The eight photos as the network's input: real detections in the heads and candidates."""
    return np.stack([images.preprocess_bytes(p.read_bytes(), 416, 416)[0] for p in photos[:8]])


def _plain(model, cand, x):
    net = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    heads = net.run(None, {net.get_inputs()[0].name: x})
    if cand is None:
        return heads
    c = ort.InferenceSession(cand, providers=["CPUExecutionProvider"])
    return c.run(None, dict(zip([i.name for i in c.get_inputs()], heads)))


@pytest.mark.parametrize("with_candidates", [False, True])
def test_cpu_outputs_equal_onnx_runtime_for_any_split(detector_files, batch, with_candidates):
    model, cand = detector_files
    cand = cand if with_candidates else None
    det = OrtEngine(model, cand, max_batch=8)
    ref = _plain(model, cand, batch)
    for split in ([8], [1, 7], [3, 1, 4], [1] * 8):
        bounds = np.cumsum([0, *split])
        got = det([batch[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        assert len(got) == len(det.output_names) == len(ref)
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g, r, err_msg=str(split))
    with pytest.raises(ValueError, match="expected 1..8"):
        det([batch, batch[:1]])


def test_cuda_graphs_setting_reaches_the_detector(tmp_path):
    """--cuda-graphs on (default) / off: the detector's config parameter, and its engine beside model.py."""
    import build_repo
    from yolotriton.build.repository import RepositoryError, RepositorySettings, model_configs, render_repository

    det = model_configs(SPEC, RepositorySettings(detector_device="gpu"))[0][1]
    assert det.parameters["cuda_graphs"] == "on"
    off = model_configs(SPEC, RepositorySettings(detector_device="gpu", cuda_graphs="off"))[0][1]
    assert off.parameters["cuda_graphs"] == "off"
    with pytest.raises(RepositoryError, match="expected on or off"):
        RepositorySettings(cuda_graphs="yes")
    assert build_repo.parse_args(["--cuda-graphs", "off"]).cuda_graphs == "off"
    assert build_repo.parse_args([]).cuda_graphs == "on"
    render_repository(tmp_path, SPEC, RepositorySettings())
    assert (tmp_path / "yolov4_detector" / "1" / "runtime" / "ort_engine.py").is_file()


@gpu
@pytest.mark.parametrize("with_candidates", [False, True])
def test_cuda_graphs_equal_eager_cuda_while_the_batch_size_changes(detector_files, batch, with_candidates):
    model, cand = detector_files
    cand = cand if with_candidates else None
    eager = OrtEngine(model, cand, max_batch=8, cuda=True, cuda_graphs=False, cuda_wait="spin")
    graphed = OrtEngine(model, cand, max_batch=8, cuda=True, cuda_wait="spin")
    assert sorted(graphed.graphs) == list(range(1, 9)) and not eager.graphs  # a graph per batch size
    for n in (1, 3, 8, 2, 5, 1, 8, 4, 7, 6, 2):
        x = np.roll(batch, n, axis=0)[:n]
        # the first request's tensor on the device (the GPU preprocess), the rest from the host
        parts = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x[:1]), "cuda", 0), x[1:]] if n > 1 else [x]
        got, ref = graphed(parts), eager(x)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5, err_msg=f"batch {n}")


@gpu
def test_a_model_without_capturable_shapes_runs_without_graphs(tmp_path, batch):
    """An output whose size depends on the data gets no fixed buffer: served eagerly, the reason logged."""
    import onnx
    from onnx import TensorProto, helper

    bright = helper.make_tensor("bright", TensorProto.FLOAT, [], [0.999])
    graph = helper.make_graph(
        [helper.make_node("Greater", ["images", "bright"], ["mask"]), helper.make_node("NonZero", ["mask"], ["where"])],
        "where", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 416, 416, 3])],
        [helper.make_tensor_value_info("where", TensorProto.INT64, [4, "n"])], initializer=[bright])
    path = tmp_path / "where.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    said = []
    det = OrtEngine(str(path), None, max_batch=8, cuda=True, cuda_wait="spin", log=said.append)
    assert not det.graphs and any("CUDA graphs unavailable" in s for s in said), said
    for n in (3, 1, 8):
        np.testing.assert_array_equal(det([batch[:n]])[0], np.array(np.nonzero(batch[:n] > np.float32(0.999))))
