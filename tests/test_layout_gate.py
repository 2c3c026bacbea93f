"""The layout gate refuses only what it can stand behind: a darknet cfg is never second-guessed, a Keras model
that filters its own candidates is not "most candidates pass", and --accept-layout lets a checked layout through.

- napari_apple 0.0.8's trained yolov4-tiny-960.h5 (a Keras 2 .h5 with TFOpLambda layers, 1 class, decoded
  yxyx normalized boxes, filtered by score inside its own graph, so its output length depends on the image),
  taken from the package's own wheel: built with the documented flags, served, and compared with the
  model's own TensorFlow inference, photo by photo, in one multi-photo request and under concurrent load;
- the official yolov4.cfg with random He-scaled darknet weights (which trip the gate's heuristics): built,
  its ONNX matches OpenCV's darknet runtime, and it is served.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import build_repo
from reference import assert_same_detections, detections, infer_bytes, opencv_net, opencv_raw_heads
from yolotriton.runtime import images
from yolotriton.build.layout_gate import check_layout
from yolotriton.serve.server import TritonServer
from yolotriton.build.spec import DecodedLayout, DetectorSpec, SpecError, YoloHead

ROOT = Path(__file__).resolve().parent.parent
NAPARI = ("napari_apple", "0.0.8", "napari_apple-0.0.8-py3-none-any.whl",
          "f8224685b96e9f5587941403b2af1249678baaaad42abb8a11af17dac689fed8")  # the wheel's sha256


# ------------------------------------------------------------------ the gate's rules, on made-up outputs

def _raw_spec():
    head = YoloHead(name="head_0", anchors=((10, 14), (23, 27), (37, 58)), stride=32, grid=(2, 2))
    return DetectorSpec(input_height=64, input_width=64, num_classes=2, heads=(head,))


def _sigmoid_like_heads():
    """Every raw channel in [0.2, 0.8]: looks activated, and every candidate scores about 0.25."""
    return {"head_0": np.random.default_rng(0).uniform(0.55, 0.8, (2, 2, 2, 21)).astype(np.float32)}


def test_declared_layout_warns_and_never_refuses():
    lines = check_layout(_raw_spec(), _sigmoid_like_heads(), 0.25, declared=True)
    text = "\n".join(lines)
    assert "warning" in text and "trained weights" in text and "--activated" not in text, text


def test_keras_layout_refusal_names_the_fix_then_the_override():
    with pytest.raises(SpecError) as e:
        check_layout(_raw_spec(), _sigmoid_like_heads(), 0.25)
    msg = str(e.value)
    assert "--activated" in msg and msg.rstrip().endswith("to build anyway") and "--accept-layout" in msg, msg
    assert msg.index("--activated") < msg.index("--accept-layout")
    lines = check_layout(_raw_spec(), _sigmoid_like_heads(), 0.25, accept=True)
    assert any("warning (--accept-layout)" in ln for ln in lines), lines


def test_a_model_that_filters_its_candidates_is_not_most_candidates_pass():
    spec = DetectorSpec(input_height=960, input_width=960, num_classes=1,
                        decoded=DecodedLayout(box_format="yxyx", normalized=True))
    det = np.zeros((2, 12, 5), np.float32)
    det[:, :, :4] = [0.2, 0.2, 0.4, 0.4]
    det[:, :, 4] = 0.9  # every returned box passed the model's own threshold
    lines = check_layout(spec, {"detections": det}, 0.05)
    assert "filters its own candidates" in lines[-1] and lines[-1].endswith("plausible"), lines
    # an unrecognised model's yxyx cannot be told from xyxy by its values: the build says so, it does not pass silently
    assert "box order yxyx as given, not verified" in lines[0] and "python -m client detect" in lines[0], lines


# ------------------------------------------------------------------ decoded values in head-shaped outputs

def _heads(decoded: bool, grid: int = 13, anchors: int = 3, classes: int = 80, seed: int = 0) -> np.ndarray:
    """[2, grid, grid, anchors*(5+classes)]: decoded as hhk7734's yolov4 2.x writes them ((sigmoid + cell) / grid,
    anchor * exp / width, sigmoids), or the same logits with only xy/obj/cls through a sigmoid (raw, activated)."""
    t = np.random.default_rng(seed).normal(0, 1.5, (2, grid, grid, anchors, 5 + classes)).astype(np.float32)
    sig = 1 / (1 + np.exp(-t))
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    xy = (sig[..., 0:2] - 0.5) * 1.05 + 0.5
    if decoded:
        xy = (xy + np.stack([cols, rows], -1)[None, :, :, None, :]) / grid
    wh = np.exp(t[..., 2:4]) * (0.1 if decoded else 1.0)
    out = np.concatenate([xy, t[..., 2:4] if not decoded else wh, sig[..., 4:]], -1)
    return out.reshape(2, grid, grid, anchors * (5 + classes))


def test_decoded_heads_are_told_from_raw_ones_by_their_values():
    from yolotriton.build.layout_gate import decoded_heads_evidence

    told = decoded_heads_evidence([_heads(True, 13), _heads(True, 26, seed=1)], [3, 3])
    assert told and "decoded heads" in told and "correlation" in told, told
    assert decoded_heads_evidence([_heads(False, 13), _heads(False, 26, seed=1)], [3, 3]) is None
    logits = np.random.default_rng(2).normal(0, 3, (2, 13, 13, 255)).astype(np.float32)
    assert decoded_heads_evidence([logits], [3]) is None


def test_a_raw_reading_of_decoded_heads_is_refused_naming_the_reading_the_values_support():
    head = lambda i, g: YoloHead(name=f"head_{i}", anchors=((10, 14), (23, 27), (37, 58)), stride=416 // g,
                                 grid=(g, g), activated=("xy", "obj", "cls"), scale_x_y_applied=True)
    spec = DetectorSpec(input_height=416, input_width=416, num_classes=80, heads=(head(0, 26), head(1, 13)))
    outputs = {"head_0": _heads(True, 26, seed=1), "head_1": _heads(True, 13)}
    with pytest.raises(SpecError) as e:  # the flags hhk7734's 3.x needs, on 2.x's values: wrong boxes if served
        check_layout(spec, outputs, 0.25)
    msg = str(e.value)
    assert "--layout decoded-heads" in msg and "cell offset is already added" in msg and "pass --activated" not in msg
    lines = check_layout(spec, outputs, 0.25, declared=True)  # a darknet cfg is never refused, nor told decoded
    assert not any("decoded-heads" in ln for ln in lines), lines


class _Probe:
    told = ""

    def __init__(self, outputs):
        self.outputs = outputs

    def __call__(self, h, w):
        return self.outputs


def test_decoded_heads_are_inferred_from_the_values_unless_raw_flags_are_given():
    from yolotriton.build.importer import infer_spec

    outs = [_heads(True, 13), _heads(True, 26, seed=1)]
    shapes = [(None, 13, 13, 255), (None, 26, 26, 255)]
    names = tuple(f"c{i}" for i in range(80))
    for layout in ({}, {"anchors": "yolov4-tiny"}):
        probe = _Probe(outs)
        spec, order = infer_spec("m", (None, 416, 416, 3), shapes, names, layout, probe=probe)
        assert spec.decoded == DecodedLayout(box_format="cxcywh", normalized=True, has_objectness=True,
                                             outputs=("detections",)) and order == [1, 0], spec
        assert spec.num_classes == 80 and "decoded heads" in probe.told, probe.told
    spec, _ = infer_spec("m", (None, 416, 416, 3), shapes, names, {"layout": "decoded-heads"})  # declared
    assert spec.decoded is not None and spec.decoded.box_format == "cxcywh"
    raw = {"anchors": "yolov4-tiny", "activated": "xy,obj,cls", "scale_x_y_applied": True}
    spec, _ = infer_spec("m", (None, 416, 416, 3), shapes, names, raw, probe=_Probe(outs))
    assert spec.heads and spec.decoded is None  # the flags say raw: the gate then refuses on the values


# ------------------------------------------------------------------ napari_apple's trained model

@pytest.fixture(scope="module")
def napari_model(tmp_path_factory):
    """The .h5 and names from the package's wheel on PyPI (pip download, cached in .cache/wheels)."""
    name, version, wheel, sha256 = NAPARI
    cache = ROOT / ".cache" / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / wheel).is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache),
                        f"{name}=={version}"], check=True)
    assert hashlib.sha256((cache / wheel).read_bytes()).hexdigest() == sha256, "napari_apple wheel changed"
    out = tmp_path_factory.mktemp("napari")
    with zipfile.ZipFile(cache / wheel) as z:
        h5 = out / "yolov4-tiny-960.h5"
        h5.write_bytes(z.read("napari_apple/weight-darknet/yolov4-tiny-960.h5"))
        names = out / "obj.names"
        names.write_bytes(z.read("napari_apple/main_folder/obj.names"))
    return h5, names


def _own_inference(model, photo: Path, threshold=0.05, iou=0.45):
    """The model's own TensorFlow output on our pixels (stretch 960x960, [0,1]), then OpenCV's NMS, boxes in
    the photo's pixels: the reference the served detections must equal."""
    data = photo.read_bytes()
    x, meta = images.preprocess_bytes(data, 960, 960, "stretch")
    out = np.asarray(model(x[None], training=False))[0]  # [n, 5]: y1, x1, y2, x2 normalized, score
    h, w = meta[0], meta[1]
    keep_rows = out[out[:, 4] > threshold]
    boxes = np.stack([keep_rows[:, 1] * w, keep_rows[:, 0] * h, keep_rows[:, 3] * w, keep_rows[:, 2] * h], 1)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), keep_rows[:, 4].tolist(), threshold, iou), np.int64).ravel()
    keep = keep[np.argsort(-keep_rows[keep, 4], kind="stable")]
    b = boxes[keep]
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    return b, keep_rows[keep, 4], np.zeros(len(keep), np.int64)


@pytest.mark.slow
def test_napari_apple_h5_builds_and_is_served_as_its_own_inference(napari_model, photos, tmp_path, capsys):
    import tf_keras

    h5, names = napari_model
    repo = tmp_path / "repo"
    assert build_repo.main(["--keras", str(h5), "--box-format", "yxyx", "--normalized-boxes", "--names", str(names),
                            "--score-threshold", "0.05", "--output", str(repo),
                            # two photos whose box counts differ: a batch of them could not be stacked
                            "--parity-images", str(photos[0]), str(photos[2])]) == 0
    log = capsys.readouterr().out
    assert "change shape with the image" in log and "filters its own candidates" in log, log
    model = tf_keras.models.load_model(h5, compile=False)
    refs = {p: _own_inference(model, p) for p in photos}
    assert sum(len(r[0]) for r in refs.values()) >= 10  # the photos give it something to find
    with TritonServer(repo, log_path=tmp_path / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for p in photos:  # one at a time
            assert_same_detections(detections(infer_bytes(client, grpcclient, [p.read_bytes()])), refs[p],
                                   threshold=0.05, context=p.name)
        batch = infer_bytes(client, grpcclient, [p.read_bytes() for p in photos])  # one request, every photo
        for i, p in enumerate(photos):
            assert_same_detections(detections(batch, i), refs[p], threshold=0.05, context=f"batched {p.name}")

        def one(k):  # concurrent requests, which the dynamic batcher groups
            c = grpcclient.InferenceServerClient(server.grpc_url)
            p = photos[k % len(photos)]
            return p, detections(infer_bytes(c, grpcclient, [p.read_bytes()]))

        with ThreadPoolExecutor(8) as pool:
            for p, got in pool.map(one, range(48)):
                assert_same_detections(got, refs[p], threshold=0.05, context=f"concurrent {p.name}")


# ------------------------------------------------------------------ darknet: never second-guessed

@pytest.mark.slow
def test_official_yolov4_cfg_with_random_weights_builds_matches_opencv_and_serves(shared, tmp_path, capsys):
    from test_darknet import write_random_weights
    from yolotriton.build.darknet import build_graph, parse_cfg

    import onnxruntime as ort

    cfg = shared / "yolov4.cfg"
    weights = tmp_path / "random.weights"
    write_random_weights(build_graph(parse_cfg(cfg)), weights)  # He-scaled: the gate's heuristics trip on these
    repo = tmp_path / "repo"
    assert build_repo.main(["--cfg", str(cfg), "--weights", str(weights), "--output", str(repo)]) == 0
    log = capsys.readouterr().out
    assert "[layout] warning" in log and "trained weights" in log, log
    blob = cv2.dnn.blobFromImage(cv2.imread(str(shared / "dog.jpg")), 1 / 255.0, (608, 608), swapRB=True, crop=False)
    sess = ort.InferenceSession(str(repo / "yolov4_detector" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    ours = sess.run(None, {"images": blob.transpose(0, 2, 3, 1).copy()})
    for got, ref in zip(ours, opencv_raw_heads(opencv_net(cfg, weights), blob)):
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    with TritonServer(repo, log_path=tmp_path / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        res = infer_bytes(client, grpcclient, [(shared / "dog.jpg").read_bytes()])
        assert res["boxes"].shape == (1, 100, 4) and 0 <= int(res["num_detections"][0, 0]) <= 100


def test_an_unrecognised_nms_model_is_told_its_box_order_cannot_be_checked():
    spec = DetectorSpec(input_height=416, input_width=416, num_classes=2,
                        decoded=DecodedLayout(box_format="yxyx", normalized=True,
                                              outputs=("nms_boxes", "nms_scores", "nms_classes", "nms_count")))
    outputs = {"nms_boxes": np.array([[[0.1, 0.2, 0.5, 0.6]] * 3], np.float32),
               "nms_scores": np.array([[0.9, 0.8, 0.0]], np.float32),
               "nms_classes": np.array([[0, 1, 0]], np.float32), "nms_count": np.array([[2]], np.float32)}
    lines = check_layout(spec, outputs, 0.25)
    assert "cannot tell xyxy from yxyx" in lines[0] and "python -m client detect" in lines[0], lines
    assert not any("xyxy" in ln for ln in check_layout(spec, outputs, 0.25, recognised=True))


def test_an_open_input_size_given_fixes_the_grids_from_the_model_run_at_it():
    """david8862's converter writes an .h5 with an open input size, so its heads' grids are open too: with
    --input-size the model is run at that size and the grids read from what it gives (the hint no longer loops)."""
    from yolotriton.build.importer import infer_spec

    logits = [np.random.default_rng(i).normal(0, 3, (2, g, g, 255)).astype(np.float32) for i, g in ((0, 13), (1, 26))]
    open_shapes = [(None, None, None, 255), (None, None, None, 255)]
    spec, order = infer_spec("m", (None, None, None, 3), open_shapes, (), {"input_size": 416, "anchors": "yolov4-tiny"},
                             probe=_Probe(logits))
    assert [h.grid for h in spec.heads] == [(26, 26), (13, 13)] and order == [1, 0], spec
    with pytest.raises(SpecError, match="pass --input-size"):  # without it the size is still asked for, once
        infer_spec("m", (None, None, None, 3), open_shapes, (), {"anchors": "yolov4-tiny"}, probe=_Probe(logits))
