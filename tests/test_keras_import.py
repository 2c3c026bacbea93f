"""Keras 3 .keras, Keras 2 .h5 (TFOpLambda layers, via tf_keras) and SavedModel inputs, raw and decoded layouts."""
from __future__ import annotations

import numpy as np
import pytest

from reference import iou
from yolotriton.build.pipeline import BuildOptions, build
from yolotriton.build.importer import ImportOptions, import_model
from yolotriton.serve.local import LocalPipeline
from yolotriton.build.repository import RepositorySettings
from yolotriton.build.spec import SpecError


def build_from(keras_path, tmp_path, photos, names=None, **layout):
    out = tmp_path / "repo"
    build(BuildOptions(source=ImportOptions(keras=keras_path, names=names, layout=layout),
                       repo=RepositorySettings(), output=out, parity_images=tuple(photos[:2]), log=lambda *_: None))
    return out


def same_detections(a, b):
    assert sorted(a.classes.tolist()) == sorted(b.classes.tolist())
    for c, box in zip(a.classes, a.boxes):
        assert max(iou(box, o) for o in b.boxes[b.classes == c]) > 0.99


@pytest.fixture(scope="module")
def darknet_pipeline(built_repo):
    return LocalPipeline(built_repo)


def test_keras3_file_with_anchor_preset(tiny_detector, default_model, photos, tmp_path, darknet_pipeline):
    path = tmp_path / "tiny.keras"
    tiny_detector.model.save(path)
    repo = build_from(path, tmp_path, photos, names=default_model.names, anchors="yolov4-tiny")
    data = photos[0].read_bytes()
    same_detections(LocalPipeline(repo)([data])[0], darknet_pipeline([data])[0])


def test_keras2_h5_with_tfoplambda_layers(tmp_path, photos):
    import tensorflow as tf
    import tf_keras as k2

    inp = k2.Input((64, 64, 3))
    x = tf.nn.leaky_relu(k2.layers.Conv2D(16, 3, strides=2, padding="same")(inp), alpha=0.1)  # TFOpLambda
    # heads biased to "nothing here", as a trained detector's mostly are: the layout gate refuses a model
    # whose every candidate scores above the threshold
    head = lambda: k2.layers.Conv2D(3 * 7, 1, bias_initializer=k2.initializers.Constant(-6.0))
    fine = head()(x)
    y = k2.layers.Conv2D(32, 3, strides=2, padding="same")(x)[..., :16]  # SlicingOpLambda
    coarse = head()(y)
    model = k2.Model(inp, [coarse, fine])  # coarse first: the importer orders heads finest grid first
    path = tmp_path / "legacy.h5"
    model.save(path)
    kinds = {type(l).__name__ for l in k2.models.load_model(path, compile=False).layers}
    assert {"TFOpLambda", "SlicingOpLambda"} <= kinds
    det = import_model(ImportOptions(keras=path, layout={"anchors": "10,14,23,27,37,58,81,82,135,169,344,319"}))
    assert [h.grid for h in det.spec.heads] == [(32, 32), (16, 16)] and det.spec.num_classes == 2
    assert det.spec.heads[0].anchors == ((10, 14), (23, 27), (37, 58)) and det.spec.heads[1].stride == 4
    repo = build_from(path, tmp_path, photos, anchors="10,14,23,27,37,58,81,82,135,169,344,319")
    assert (repo / "yolov4_detector" / "1" / "model.onnx").is_file()


def decoded_model(tiny_detector):
    """tensorflow-yolov4-tflite's export layout: [N, boxes, 4+C], boxes (y1,x1,y2,x2) in [0,1], obj*cls scores."""
    import keras
    from keras import ops

    spec = tiny_detector.spec
    inp = keras.Input((spec.input_height, spec.input_width, 3))
    outs = tiny_detector.model(inp)
    rows = []
    for h, t in zip(spec.heads, outs):
        gh, gw = h.grid
        a = len(h.anchors)
        t = ops.reshape(t, (-1, gh, gw, a, 5 + spec.num_classes))
        gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grid = np.stack([gx, gy], -1)[None, :, :, None, :].astype("float32")
        xy = (ops.sigmoid(t[..., 0:2]) * h.scale_x_y - 0.5 * (h.scale_x_y - 1) + grid) / np.array([gw, gh], "float32")
        wh = ops.exp(t[..., 2:4]) * np.array(h.anchors, "float32") / np.array([spec.input_width, spec.input_height], "float32")
        yx, hw = xy[..., ::-1], wh[..., ::-1]
        boxes = ops.concatenate([yx - hw / 2, yx + hw / 2], axis=-1)
        scores = ops.sigmoid(t[..., 4:5]) * ops.sigmoid(t[..., 5:])
        rows.append(ops.reshape(ops.concatenate([boxes, scores], -1), (-1, gh * gw * a, 4 + spec.num_classes)))
    return keras.Model(inp, ops.concatenate(rows, axis=1))


def test_savedmodel_with_decoded_outputs(tiny_detector, default_model, photos, tmp_path, darknet_pipeline):
    saved = tmp_path / "saved"
    decoded_model(tiny_detector).export(str(saved), format="tf_saved_model", verbose=False)
    with pytest.raises(SpecError, match="need the box format"):
        import_model(ImportOptions(keras=saved))
    repo = build_from(saved, tmp_path, photos, names=default_model.names, box_format="yxyx", normalized_boxes=True)
    pipe = LocalPipeline(repo)
    for photo in photos[:3]:
        data = photo.read_bytes()
        same_detections(pipe([data])[0], darknet_pipeline([data])[0])


def test_raw_heads_without_anchors_name_the_missing_piece(tiny_detector, tmp_path):
    path = tmp_path / "tiny.keras"
    tiny_detector.model.save(path)
    with pytest.raises(SpecError, match="raw YOLO heads need anchors.*--anchors"):
        import_model(ImportOptions(keras=path))


def test_scores_and_classes_told_apart_by_dtype_and_values():
    """importer.scores_and_classes on an NMS model's outputs (boxes, a, b, count): argument plumbing, no model."""
    from yolotriton.build.importer import scores_and_classes

    boxes = np.zeros((2, 4, 4), np.float32)
    count = np.array([3, 1])
    classes = np.array([[0, 17, 2, 0], [5, 0, 0, 0]], np.float32)
    scores = np.array([[0.9, 0.5, 0.31, 0], [0.77, 0, 0, 0]], np.float32)
    assert scores_and_classes([boxes, classes, scores, count], [1, 2], 3, 80) == (2, 1)
    assert scores_and_classes([boxes, scores, classes, count], [1, 2], 3, 80) == (1, 2)
    assert scores_and_classes([boxes, scores, classes.astype(np.int32), count], [1, 2], 3, 80) == (1, 2)  # dtype
    # no detection on the photos, classes all 0, or classes at or above the class count: they do not tell
    assert scores_and_classes([boxes, scores, classes, np.array([0, 0])], [1, 2], 3, 80) is None
    assert scores_and_classes([boxes, scores, np.zeros_like(classes), count], [1, 2], 3, 80) is None
    assert scores_and_classes([boxes, scores, classes, count], [1, 2], 3, 10) is None
