"""The built default repository, run in-process (same code as the served models), against OpenCV's darknet."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest

from reference import assert_same_detections, iou, opencv_detect, opencv_net
from yolotriton.runtime import images
from yolotriton.runtime.images import ImageError, image_size, preprocess_bytes
from yolotriton.serve.local import LocalPipeline


@pytest.fixture(scope="module")
def pipeline(built_repo):
    return LocalPipeline(built_repo)


def test_onnx_has_stable_names_and_dynamic_batch(built_repo):
    m = onnx.load(str(built_repo / "yolov4_detector" / "1" / "model.onnx"))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ["images"]
    assert [o.name for o in m.graph.output] == ["head_0", "head_1"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 17


def test_detections_match_opencv_on_every_photo(pipeline, default_model, photos):
    net = opencv_net(default_model.cfg, default_model.weights)
    found = 0
    for photo in photos:
        ours = pipeline([photo.read_bytes()])[0]
        ref = opencv_detect(net, cv2.imread(str(photo)), (416, 416))
        assert_same_detections((ours.boxes, ours.scores, ours.classes), ref, context=photo.name)
        found += len(ref[0])
    assert found >= 20  # the photos hold dogs, people, horses, a bus...


def test_dog_photo_finds_darknets_classes(pipeline, shared):
    labels = (shared / "coco.names").read_text().split("\n")
    det = pipeline([(shared / "dog.jpg").read_bytes()])[0]
    assert {"dog", "bicycle", "truck"} <= {labels[c] for c in det.classes}


def test_letterbox_maps_boxes_back(built_repo, shared):
    """Letterbox and stretch see the same dog: their boxes, mapped back to the photo, must agree."""
    stretch = LocalPipeline(built_repo)
    letter = LocalPipeline(built_repo)
    letter.mode = "letterbox"
    data = (shared / "dog.jpg").read_bytes()
    a, b = stretch([data])[0], letter([data])[0]

    dog_a, dog_b = a.boxes[a.classes == 16][0], b.boxes[b.classes == 16][0]
    assert iou(dog_a, dog_b) > 0.8


def test_image_header_checks(shared):
    data = (shared / "dog.jpg").read_bytes()
    assert image_size(data) == ("jpeg", 768, 576)
    with pytest.raises(ImageError, match="truncated JPEG"):
        image_size(data[:len(data) // 2])
    with pytest.raises(ImageError, match="not a JPEG, PNG or BMP"):
        image_size(b"hello world")
    with pytest.raises(ImageError, match="empty image"):
        image_size(b"")
    # A PNG that claims 12000x10000 is refused from its header, before decoding
    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    big = bytearray(png.tobytes())
    big[16:24] = (12000).to_bytes(4, "big") + (10000).to_bytes(4, "big")
    with pytest.raises(ImageError, match="120,000,000 pixels, above the limit"):
        preprocess_bytes(bytes(big), 416, 416)


def test_reduced_scale_decode_keeps_detections(pipeline, shared):
    """A 4x upscaled photo is decoded at 1/2 or 1/4 scale in libjpeg; detections must not change."""
    img = cv2.imread(str(shared / "dog.jpg"))
    big = cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    ok, enc = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])
    a = pipeline([(shared / "dog.jpg").read_bytes()])[0]
    b = pipeline([enc.tobytes()])[0]
    assert sorted(a.classes.tolist()) == sorted(b.classes.tolist())

    for c in set(a.classes.tolist()):
        assert iou(a.boxes[a.classes == c][0], b.boxes[b.classes == c][0] / 4) > 0.9  # b is in 4x pixels


def test_jpeg_decode_gives_opencvs_pixels(photos, shared):
    """The preprocess decodes JPEGs with simplejpeg into a reused buffer; the pixels must be exactly
    OpenCV's (the reference the detections are compared with), at full and at reduced scale."""
    arrays = []
    for p in photos:
        data = p.read_bytes()
        got, _ = images.decode(data, 416, 416)
        assert np.array_equal(got, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)), p.name
        arrays.append(got.copy())
    # The buffer is reused: a later decode must not have been left with an earlier photo's pixels
    again, _ = images.decode(photos[0].read_bytes(), 416, 416)
    assert np.array_equal(again, arrays[0])

    img = cv2.imread(str(shared / "dog.jpg"))
    for factor, flag in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4)):
        big = cv2.imencode(".jpg", cv2.resize(img, (416 * factor + 8, 416 * factor + 8)))[1]
        got, orig = images.decode(big.tobytes(), 416, 416)
        assert orig == (416 * factor + 8, 416 * factor + 8)
        assert np.array_equal(got, cv2.cvtColor(cv2.imdecode(big, flag), cv2.COLOR_BGR2RGB)), factor


def test_jpeg_decode_without_simplejpeg_falls_back_to_opencv(shared, monkeypatch):
    """An environment without simplejpeg (a hand-made offline venv) decodes the same pixels via OpenCV."""
    data = (shared / "dog.jpg").read_bytes()
    big = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(shared / "dog.jpg")), (1700, 1300)))[1].tobytes()
    want = [images.decode(d, 416, 416)[0].copy() for d in (data, big)]
    monkeypatch.setattr(images, "simplejpeg", None)
    got = [images.decode(d, 416, 416)[0] for d in (data, big)]
    assert got[1].shape == (650, 850, 3)  # still decoded at 1/2 scale
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_jpeg_decode_of_grey_and_cmyk_photos(shared):
    from PIL import Image
    import io

    photo = Image.open(shared / "dog.jpg")
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        photo.convert(mode).save(buf, "JPEG", quality=95)
        data = buf.getvalue()
        got, _ = images.decode(data, 416, 416)
        want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
        assert got.shape == (576, 768, 3), mode
        assert np.abs(got.astype(int) - want).max() <= 1, mode


def test_letterbox_boxes_wholly_in_the_padding_are_dropped():
    """A 100x50 photo letterboxed into 64x64: rows 16..48 show the photo, the rest is padding. A box that lies
    only in the padding would otherwise come back as a zero-area box on the photo's edge (tf-yolov4's own
    predict() drops those); one that overlaps the photo is kept and clipped to it."""
    from yolotriton.runtime.detections import Decoder
    from yolotriton.build.spec import DecodedLayout, DetectorSpec

    spec = DetectorSpec(input_height=64, input_width=64, num_classes=1,
                        decoded=DecodedLayout(box_format="xyxy", outputs=("decoded_boxes", "decoded_scores")))
    boxes = np.array([[[10, 2, 30, 12],     # wholly in the top padding
                       [10, 50, 30, 60],    # wholly in the bottom padding
                       [10, 10, 30, 20]]], np.float32)  # overlaps the photo
    scores = np.array([[[0.9], [0.8], [0.7]]], np.float32)
    meta = np.array([[50, 100, 0.64, 0.64, 16, 0]], np.float32)  # h, w, scale y, scale x, top, left
    num, out, sc, _ = Decoder(json.loads(spec.to_json()))({"decoded_boxes": boxes, "decoded_scores": scores}, meta, 0.25, 0.45, 10)
    assert num[0, 0] == 1 and sc[0, 0] == pytest.approx(0.7)
    assert out[0, 0, 1] == 0 and out[0, 0, 3] == pytest.approx(4 / 0.64)  # clipped to the photo's top rows
    stretch = meta.copy()
    stretch[0, 4:] = 0  # no padding: nothing is dropped
    assert Decoder(json.loads(spec.to_json()))({"decoded_boxes": boxes, "decoded_scores": scores}, stretch, 0.25, 0.45, 10)[0][0, 0] == 3


def test_diou_nms_and_best_class_only():
    """darknet's diounms, worked by hand: DIoU = IoU - (d^2 / c^2)^beta. Two boxes of IoU 0.8 with the same
    centre: DIoU 0.8 > 0.6, the second is dropped; IoU 0.667 with centres 0.2 apart in a 1 x 1.2 enclosing box:
    0.667 - (0.04 / 2.44)^0.6 = 0.582, kept (greedy IoU NMS at 0.6 drops it). Classes are separate;
    best_class keeps one class a box."""
    from yolotriton.runtime.detections import Decoder
    from yolotriton.runtime.nms import best_class, diou_nms

    a = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    inner = np.array([0.0, 0.0, 1.0, 0.8], np.float32) + np.array([0, 0.1, 0, 0.1], np.float32)  # same centre
    shifted = np.array([0.0, 0.2, 1.0, 1.2], np.float32)  # IoU 0.8/1.2, centres 0.2 apart, enclosing diagonal^2 2.44
    boxes = np.stack([a, inner, shifted, a])
    scores = np.array([0.9, 0.8, 0.7, 0.5], np.float32)
    classes = np.array([0, 0, 0, 1])
    assert sorted(diou_nms(boxes, scores, classes, 0.6, 0.6).tolist()) == [0, 2, 3]
    d = 0.8 / 1.2 - (0.04 / 2.44) ** 0.6
    assert sorted(diou_nms(boxes, scores, classes, d - 1e-4, 0.6).tolist()) == [0, 3]  # just below: dropped too
    assert sorted(diou_nms(boxes, scores, classes, d + 1e-4, 0.6).tolist()) == [0, 2, 3]
    # box 0 and box 3 are one box with two classes: best_class keeps class 0's 0.9
    assert sorted(best_class(boxes, scores, np.array([0, 2, 3])).tolist()) == [0, 2]
    # through the Decoder: decoded boxes in pixels, multi-label by default, one class a box on request
    spec = {"input_height": 100, "input_width": 100, "num_classes": 2,
            "decoded": {"outputs": ["decoded_boxes", "decoded_scores"], "box_format": "xyxy", "normalized": False}}
    out = {"decoded_boxes": (np.stack([a, inner, shifted]) * 100)[None],
           "decoded_scores": np.array([[[0.9, 0.5], [0.8, 0.0], [0.7, 0.0]]], np.float32)}
    meta = np.array([[100, 100, 1, 1, 0, 0]], np.float32)
    num = lambda **kw: int(Decoder(spec, **kw)(out, meta, 0.25, 0.6, 10)[0][0, 0])
    assert num() == 2  # greedy IoU: class 0's box a (inner and shifted dropped) and class 1's box a
    assert num(nms_kind="diou") == 3  # shifted survives
    assert num(nms_kind="diou", best_class_only=True) == 2  # box a only as class 0
    assert num(best_class_only=True) == 1


def test_best_class_first_picks_a_box_class_before_nms():
    """hhk7734's yolov4 2.x predict(): each box takes its best class, then NMS. Box x (class 0 at 0.6, class 1 at
    0.4) under box y (class 0 at 0.9, IoU 0.9): x's class 0 is suppressed; after NMS x's class 1 survives and is
    its best surviving class (--best-class-only), while best-class-first never lets x be class 1."""
    from yolotriton.runtime.detections import Decoder
    from yolotriton.runtime.settings import nms_options

    spec = {"input_height": 100, "input_width": 100, "num_classes": 2,
            "decoded": {"outputs": ["decoded_boxes", "decoded_scores"], "box_format": "xyxy", "normalized": False}}
    out = {"decoded_boxes": np.array([[[10, 10, 60, 60], [10, 12, 60, 62]]], np.float32),
           "decoded_scores": np.array([[[0.9, 0.0], [0.6, 0.4]]], np.float32)}
    meta = np.array([[100, 100, 1, 1, 0, 0]], np.float32)
    run = lambda **kw: Decoder(spec, **kw)(out, meta, 0.25, 0.45, 10)
    num, _, scores, classes = run(best_class_only=True)
    assert num[0, 0] == 2 and classes[0, :2].tolist() == [0, 1]
    num, _, scores, classes = run(best_class_first=True)
    assert num[0, 0] == 1 and classes[0, 0] == 0 and scores[0, 0] == np.float32(0.9)
    assert nms_options({"best_class_first": "on"})["best_class_first"] and not nms_options({})["best_class_first"]


def test_inside_input_only_drops_edge_and_tiny_boxes_before_nms():
    """hhk7734's yolov4 2.x predict() drops boxes not wholly inside the input and those of 4 px or less before its
    NMS, so a lower box they would have suppressed survives: here the 0.9 box crosses the left edge."""
    from yolotriton.runtime.detections import Decoder

    spec = {"input_height": 100, "input_width": 100, "num_classes": 1,
            "decoded": {"outputs": ["decoded_boxes", "decoded_scores"], "box_format": "xyxy", "normalized": False}}
    out = {"decoded_boxes": np.array([[[-2, 10, 50, 60], [1, 12, 50, 62], [70, 70, 73, 90]]], np.float32),
           "decoded_scores": np.array([[[0.9], [0.6], [0.8]]], np.float32)}
    meta = np.array([[100, 100, 1, 1, 0, 0]], np.float32)
    num, _, scores, _ = Decoder(spec)(out, meta, 0.25, 0.45, 10)
    assert num[0, 0] == 2 and scores[0, :2].tolist() == [np.float32(0.9), np.float32(0.8)]
    num, _, scores, _ = Decoder(spec, inside_input_only=True)(out, meta, 0.25, 0.45, 10)
    assert num[0, 0] == 1 and scores[0, 0] == np.float32(0.6)  # the 3 px wide box is dropped too
