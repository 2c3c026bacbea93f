"""--decode detector: candidates.onnx decodes the raw heads into the top-K candidates inside the detector.

Here ONNX Runtime's CPU provider runs the graph (the GPU host runs the same graph on CUDA, through
scripts/gpu_host_run.sh, against a repository built with --detector-device gpu where it is the default).
The graph must give the postprocess's own decode: same detections from heads and from candidates, on
the pretrained yolov4-tiny and on random heads of every raw-layout variant; served, equal to OpenCV.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

import build_repo
from reference import assert_served_like, infer_bytes, opencv_net
from yolotriton.runtime import images
from yolotriton.build.pipeline import copy_repository, rerender
from yolotriton.build.candidates_graph import candidate_count, write_candidates_onnx
from yolotriton.runtime.decode import CANDIDATE_OUTPUTS
from yolotriton.runtime.detections import Decoder
from yolotriton.build.repository import (RepositoryError, RepositorySettings, model_configs, resolve_decode, spec_path,
                                   validate_repository)
from yolotriton.serve.server import TritonServer
from yolotriton.build.spec import DecodedLayout, DetectorSpec, YoloHead


def _candidates(spec: DetectorSpec, heads: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    write_candidates_onnx(path, spec)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(CANDIDATE_OUTPUTS, sess.run(list(CANDIDATE_OUTPUTS), heads)))


def _assert_same(a, b, context):
    num_a, boxes_a, scores_a, classes_a = a
    num_b, boxes_b, scores_b, classes_b = b
    np.testing.assert_array_equal(num_a, num_b, err_msg=context)
    np.testing.assert_array_equal(classes_a, classes_b, err_msg=context)
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-5, err_msg=context)
    np.testing.assert_allclose(boxes_a, boxes_b, atol=1e-3, rtol=1e-5, err_msg=context)


def test_candidates_equal_the_postprocess_decode_on_yolov4_tiny(built_repo, photos, tmp_path):
    """The pretrained model's heads on the eight photos: same detections at the default threshold, a low one
    and 0 (where the 4096-candidate cap decides which boxes go into NMS)."""
    spec_dict = json.loads(spec_path(built_repo).read_text())
    spec = DetectorSpec.from_dict(spec_dict)
    net = ort.InferenceSession(str(built_repo / "yolov4_detector" / "1" / "model.onnx"),
                               providers=["CPUExecutionProvider"])
    batch, meta = zip(*(images.preprocess_bytes(p.read_bytes(), 416, 416) for p in photos))
    heads = dict(zip([o.name for o in net.get_outputs()], net.run(None, {"images": np.stack(batch)})))
    cands = _candidates(spec, heads, tmp_path / "candidates.onnx")
    k = candidate_count(spec)
    assert k == 4096 and cands["candidate_boxes"].shape == (len(photos), k, 4)
    assert (np.diff(cands["candidate_scores"], axis=1) <= 0).all()  # best first
    for thr in (0.25, 0.01, 0.0):
        ref = Decoder(spec_dict)(heads, np.stack(meta), thr, 0.45, 100)
        got = Decoder(spec_dict, from_candidates=True)(cands, np.stack(meta), thr, 0.45, 100)
        _assert_same(got, ref, f"threshold {thr}")
        assert ref[0].sum() > 0


ANCHORS = ((10, 14), (23, 27), (37, 58))


@pytest.mark.parametrize("variant", [
    {}, {"activated": ("xy", "wh", "obj", "cls")}, {"activated": ("xy", "obj", "cls"), "scale_x_y_applied": True},
    {"activated": ("obj",)}, {"new_coords": True}, {"scale_x_y": 1.0},
])
def test_candidates_equal_the_postprocess_decode_for_every_raw_layout(variant, tmp_path):
    """Random heads, non-square input and grids, three heads: every way a raw head can be partly decoded."""
    rng = np.random.default_rng(7)
    sxy = variant.pop("scale_x_y", 1.1)
    spec = DetectorSpec(96, 128, 6, heads=tuple(
        YoloHead(f"head_{i}", ANCHORS, s, (96 // s, 128 // s), scale_x_y=sxy, **variant)
        for i, s in enumerate((8, 16, 32))))
    heads = {}
    for h in spec.heads:
        t = rng.normal(0, 2, (3, *h.grid, 3 * 11)).astype(np.float32)
        t5 = t.reshape(3, *h.grid, 3, 11)
        done = {"xy", "obj", "cls"} if h.new_coords else set(h.activated)
        for group, sl in (("xy", slice(0, 2)), ("obj", slice(4, 5)), ("cls", slice(5, 11))):
            if group in done:
                t5[..., sl] = 1 / (1 + np.exp(-t5[..., sl]))
        if h.new_coords or "wh" in done:
            t5[..., 2:4] = np.abs(t5[..., 2:4])
        heads[h.name] = t
    spec_dict = json.loads(spec.to_json())
    cands = _candidates(spec, heads, tmp_path / "candidates.onnx")
    meta = np.tile(np.array([[480, 640, 0.2, 0.2, 0, 0]], np.float32), (3, 1))
    for thr in (0.5, 0.05):
        ref = Decoder(spec_dict)(heads, meta, thr, 0.45, 200)
        got = Decoder(spec_dict, from_candidates=True)(cands, meta, thr, 0.45, 200)
        _assert_same(got, ref, f"{variant} threshold {thr}")
        assert ref[0].min() > 0


def test_decode_settings():
    raw = DetectorSpec(416, 416, 80, heads=(YoloHead("head_0", ((10, 14),) * 3, 32, (13, 13)),))
    decoded = DetectorSpec(416, 416, 80, decoded=DecodedLayout())
    gpu = RepositorySettings(detector_device="gpu", preprocess_device="gpu")
    assert resolve_decode("auto", gpu, raw) == "detector"
    assert resolve_decode("auto", gpu, decoded) == "postprocess"
    assert resolve_decode("auto", RepositorySettings(), raw) == "postprocess"  # the CPU detector: heads are on the host
    assert resolve_decode("auto", RepositorySettings(target="tensorrt"), raw) == "postprocess"
    s = RepositorySettings(decode="detector")
    (_, det, post), _ = model_configs(raw, s)
    assert [t.name for t in det.outputs] == list(CANDIDATE_OUTPUTS) == [t.name for t in post.inputs][:3]
    assert det.outputs[0].dims == (min(4096, 13 * 13 * 3 * 80), 4) and det.outputs[2].data_type == "TYPE_INT32"
    assert det.parameters["candidates_file"] == "candidates.onnx" and post.parameters["inputs"] == "candidates"
    with pytest.raises(RepositoryError, match="needs raw YOLO heads"):
        model_configs(decoded, s)
    with pytest.raises(RepositoryError, match="option of --target python"):
        RepositorySettings(target="tensorrt", decode="detector")
    with pytest.raises(SystemExit):
        build_repo.parse_args(["--decode", "gpu"])


@pytest.fixture(scope="module")
def candidates_repo(built_repo, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("decode") / "model_repository"
    copy_repository(built_repo, repo)
    rerender(repo, decode="detector", nms="postprocess", preprocess_in="preprocess")  # the three-model ensemble (test_nms_in_detector: two)
    return repo


def test_rerender_writes_and_removes_the_graph(candidates_repo, tmp_path):
    assert (candidates_repo / "yolov4_detector" / "1" / "candidates.onnx").is_file()
    validate_repository(candidates_repo)
    back = tmp_path / "back"
    copy_repository(candidates_repo, back)
    rerender(back, decode="postprocess")
    assert not (back / "yolov4_detector" / "1" / "candidates.onnx").exists()
    validate_repository(back)
    (candidates_repo / "yolov4_detector" / "1" / "candidates.onnx").rename(tmp_path / "gone.onnx")
    try:
        with pytest.raises(RepositoryError, match="candidates_file names 1/candidates.onnx, which is missing"):
            validate_repository(candidates_repo)
    finally:
        (tmp_path / "gone.onnx").rename(candidates_repo / "yolov4_detector" / "1" / "candidates.onnx")


def test_served_with_decode_in_detector_matches_opencv(candidates_repo, server, photos, default_model):
    """Served end to end (the detector stub runs both graphs): OpenCV's detections on every photo, and the
    heads-to-postprocess repository's answers, batched and one by one, with a request's own threshold."""
    net = opencv_net(default_model.cfg, default_model.weights)
    heads_client = grpcclient.InferenceServerClient(server.grpc_url)
    blobs = [p.read_bytes() for p in photos]
    with TritonServer(candidates_repo) as s:
        client = grpcclient.InferenceServerClient(s.grpc_url)
        batch = assert_served_like(client, heads_client, grpcclient, net, photos)
        low = {"score_threshold": 0.05}
        a = infer_bytes(client, grpcclient, blobs[:2], params=low)
        b = infer_bytes(heads_client, grpcclient, blobs[:2], params=low)
        np.testing.assert_array_equal(a["num_detections"], b["num_detections"])
        assert (a["num_detections"] > batch["num_detections"][:2]).all()
