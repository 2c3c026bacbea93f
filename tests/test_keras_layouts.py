"""Output layouts built around the pretrained yolov4-tiny (so they carry trained weights), served by the real
tritonserver and compared with OpenCV's darknet; and each wrong-flag case refused with the message that names
the fix. These models are our own constructions of each layout, for the flags and refusals; the real TF2
packages' models, made by the packages themselves, are tested in test_tf2_packages.py.

- partly activated heads (sigmoid on xy/obj/cls, scale_x_y applied, wh raw: hhk7734's layout);
- rank-5 heads [N,S,S,A,5+C]; a model ending in combined NMS with yxyx boxes and outputs whose names do not
  say which is which (told apart by their values);
- one decoded output with extra columns (cx,cy,w,h normalized, 4 raw, obj, classes: tf-yolov4's layout);
- a tf.keras 2 SavedModel whose convolutions end in BatchNorm + Mish (the oneDNN fusion crash).
"""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import build_repo
from reference import assert_same_detections, detections, infer_bytes, opencv_detect, opencv_net
from yolotriton.build.pipeline import BuildOptions, build
from yolotriton.build.importer import ImportOptions
from yolotriton.build.repository import RepositorySettings
from yolotriton.serve.server import TritonServer

pytestmark = pytest.mark.slow


def _grid(h):
    gh, gw = h.grid
    gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    return np.stack([gx, gy], -1)[None, :, :, None, :].astype("float32")


def _heads5(tiny, inp):
    from keras import ops

    spec = tiny.spec
    return [(h, ops.reshape(t, (-1, h.grid[0], h.grid[1], len(h.anchors), 5 + spec.num_classes)))
            for h, t in zip(spec.heads, tiny.model(inp))]


def hhk7734_model(tiny):
    import keras
    from keras import ops

    spec = tiny.spec
    inp = keras.Input((spec.input_height, spec.input_width, 3))
    outs = []
    for h, t in _heads5(tiny, inp):
        s = h.scale_x_y
        xy = ops.sigmoid(t[..., 0:2]) * s - 0.5 * (s - 1)
        t = ops.concatenate([xy, t[..., 2:4], ops.sigmoid(t[..., 4:])], -1)
        outs.append(ops.reshape(t, (-1, h.grid[0], h.grid[1], len(h.anchors) * (5 + spec.num_classes))))
    return keras.Model(inp, outs)


def rank5_model(tiny):
    import keras

    inp = keras.Input((tiny.spec.input_height, tiny.spec.input_width, 3))
    return keras.Model(inp, [t for _, t in _heads5(tiny, inp)])


def _decoded_rows(tiny, inp):
    """Per head: (xy normalized centre, wh normalized, raw t, obj, cls)."""
    from keras import ops

    spec = tiny.spec
    for h, t in _heads5(tiny, inp):
        gh, gw = h.grid
        xy = (ops.sigmoid(t[..., 0:2]) * h.scale_x_y - 0.5 * (h.scale_x_y - 1) + _grid(h)) / np.array([gw, gh], "float32")
        wh = ops.exp(t[..., 2:4]) * np.array(h.anchors, "float32") / np.array([spec.input_width, spec.input_height],
                                                                                "float32")
        yield h, xy, wh, t, ops.sigmoid(t[..., 4:5]), ops.sigmoid(t[..., 5:])


def hhk7734_v2_model(tiny):
    """hhk7734's yolov4 2.x heads: head-shaped [N, S, S, A*(5+C)], values already decoded (cx, cy, w, h normalized
    to the input with the cell offset added, objectness and classes after their sigmoid)."""
    import keras
    from keras import ops

    spec = tiny.spec
    inp = keras.Input((spec.input_height, spec.input_width, 3))
    outs = [ops.reshape(ops.concatenate([xy, wh, obj, cls], -1),
                        (-1, h.grid[0], h.grid[1], len(h.anchors) * (5 + spec.num_classes)))
            for h, xy, wh, t, obj, cls in _decoded_rows(tiny, inp)]
    return keras.Model(inp, outs)


def licht_t_model(tiny):
    """tf-yolov4 1.0.4's output: [N, boxes, 89] = cx, cy, w, h (normalized), tx, ty, tw, th, objectness, classes."""
    import keras
    from keras import ops

    spec = tiny.spec
    inp = keras.Input((spec.input_height, spec.input_width, 3))
    rows = [ops.reshape(ops.concatenate([xy, wh, t[..., 0:4], obj, cls], -1),
                        (-1, h.grid[0] * h.grid[1] * len(h.anchors), 9 + spec.num_classes))
            for h, xy, wh, t, obj, cls in _decoded_rows(tiny, inp)]
    return keras.Model(inp, ops.concatenate(rows, axis=1))


def save_nms_savedmodel(tiny, path):
    """A model ending in tf.image.combined_non_max_suppression (boxes yxyx in [0, 1]) whose outputs are named
    output_0..3."""
    import keras
    import tensorflow as tf
    from keras import ops

    spec = tiny.spec
    inp = keras.Input((spec.input_height, spec.input_width, 3))
    boxes, scores = [], []
    for h, xy, wh, t, obj, cls in _decoded_rows(tiny, inp):
        yx, hw = xy[..., ::-1], wh[..., ::-1]
        n = h.grid[0] * h.grid[1] * len(h.anchors)
        boxes.append(ops.reshape(ops.concatenate([yx - hw / 2, yx + hw / 2], -1), (-1, n, 4)))
        scores.append(ops.reshape(obj * cls, (-1, n, spec.num_classes)))
    decoded = keras.Model(inp, [ops.concatenate(boxes, 1), ops.concatenate(scores, 1)])

    @tf.function(input_signature=[tf.TensorSpec([None, spec.input_height, spec.input_width, 3], tf.float32)])
    def serve(images):
        b, s = decoded(images)
        out = tf.image.combined_non_max_suppression(b[:, :, None, :], s, 100, 100, iou_threshold=0.45,
                                                    score_threshold=0.25, clip_boxes=False)
        # names that do not say which is which, classes first in the signature's (sorted) order: the importer
        # tells scores from classes by their values on the parity photos
        return {"output_0": out.nmsed_boxes, "output_1": out.nmsed_classes, "output_2": out.nmsed_scores,
                "output_3": out.valid_detections}

    module = tf.Module()
    module.model = decoded
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


@pytest.fixture(scope="module")
def layouts_repo(tmp_path_factory, tiny_detector, default_model, photos):
    """One repository holding the three layouts' ensembles (hhk, rank5, licht, nms), each built from its model."""
    tmp = tmp_path_factory.mktemp("layouts")
    hhk7734_model(tiny_detector).save(tmp / "hhk.keras")
    hhk7734_v2_model(tiny_detector).save(tmp / "hhk2.keras")
    rank5_model(tiny_detector).save(tmp / "rank5.keras")
    licht_t_model(tiny_detector).save(tmp / "licht.keras")
    save_nms_savedmodel(tiny_detector, tmp / "nms")
    cases = {
        "hhk": (tmp / "hhk.keras", {"anchors": "yolov4-tiny", "activated": "xy,obj,cls", "scale_x_y_applied": True}),
        "rank5": (tmp / "rank5.keras", {"anchors": "yolov4-tiny"}),
        "hhk2": (tmp / "hhk2.keras", {}),  # decoded heads, told by their values
        # exactly the refusal's hint (test_a_raw_reading_of_decoded_heads_names_the_decoded_layout)
        "hhk2declared": (tmp / "hhk2.keras", {"layout": "decoded-heads"}),
        "licht": (tmp / "licht.keras", {"box_format": "cxcywh", "normalized_boxes": True, "objectness_column": 8,
                                        "class_column": 9}),
        "nms": (tmp / "nms", {"box_format": "yxyx", "normalized_boxes": True}),
    }
    merged = tmp / "repository"
    merged.mkdir()
    logs = {}
    for name, (path, layout) in cases.items():
        logs[name] = []
        out = build(BuildOptions(source=ImportOptions(keras=path, names=default_model.names, layout=layout),
                                 repo=RepositorySettings(name=name), output=tmp / f"repo-{name}",
                                 parity_images=tuple(photos[:2]), log=logs[name].append))
        for model in out.iterdir():
            if model.is_dir():
                shutil.copytree(model, merged / model.name)
    return tmp, merged, logs


@pytest.fixture(scope="module")
def layouts_server(layouts_repo, tmp_path_factory):
    with TritonServer(layouts_repo[1], log_path=tmp_path_factory.mktemp("log") / "tritonserver.log") as s:
        yield s


@pytest.mark.parametrize("name", ["hhk", "rank5", "hhk2", "hhk2declared", "licht", "nms"])
def test_layout_served_matches_opencv(layouts_server, name, photos, default_model):
    client = grpcclient.InferenceServerClient(layouts_server.grpc_url)
    net = opencv_net(default_model.cfg, default_model.weights)
    total = 0
    for photo in photos:
        ours = detections(infer_bytes(client, grpcclient, [photo.read_bytes()], model=name))
        ref = opencv_detect(net, cv2.imread(str(photo)), (416, 416))
        assert_same_detections(ours, ref, context=f"{name} {photo.name}")
        total += len(ref[0])
    assert total >= 20


def test_nms_outputs_without_telling_names_are_told_apart_by_their_values(layouts_repo):
    """output_1 holds the classes and output_2 the scores: the build log says how it told them apart (the
    served test above shows it told them right), and the parity photos gave detections to tell by."""
    log = "\n".join(layouts_repo[2]["nms"])
    assert "scores 'output_2' and classes 'output_1' told apart by their values on the parity photos" in log, log


def _refused(capsys, args, tmp_path) -> str:
    out = tmp_path / "never"
    assert build_repo.main([*args, "--output", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.glob(".never*"))
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_hhk7734_heads_with_anchors_alone_are_refused(layouts_repo, capsys, tmp_path):
    err = _refused(capsys, ["--keras", str(layouts_repo[0] / "hhk.keras"), "--anchors", "yolov4-tiny"], tmp_path)
    assert "--activated xy,obj,cls" in err and "--scale-x-y-applied" in err, err


def test_decoded_heads_are_inferred_and_said_in_the_build_log(layouts_repo):
    log = "\n".join(layouts_repo[2]["hhk2"])
    assert "values say: x rises with the column index" in log and "decoded heads" in log, log


def test_a_raw_reading_of_decoded_heads_names_the_decoded_layout(layouts_repo, capsys, tmp_path, photos):
    """The flags of hhk7734's 3.x layout on 2.x's decoded values (served, they gave 0 of 13 boxes right): refused,
    naming --layout decoded-heads, which the fixture builds as hhk2declared and the served test holds to OpenCV."""
    err = _refused(capsys, ["--keras", str(layouts_repo[0] / "hhk2.keras"), "--anchors", "yolov4-tiny",
                            "--activated", "xy,obj,cls", "--scale-x-y-applied",
                            "--parity-images", *map(str, photos[:2])], tmp_path)
    assert "--layout decoded-heads" in err and "cell offset is already added" in err, err
    assert "pass --activated" not in err, err


def test_accept_layout_lets_a_doubtful_layout_through_with_a_warning(layouts_repo, capsys, tmp_path, photos):
    out = tmp_path / "accepted"
    assert build_repo.main(["--keras", str(layouts_repo[0] / "hhk.keras"), "--anchors", "yolov4-tiny",
                            "--accept-layout", "--parity-images", *map(str, photos[:2]), "--output", str(out)]) == 0
    log = capsys.readouterr().out
    assert "warning (--accept-layout)" in log and "--activated xy,obj,cls" in log, log
    assert (out / "yolov4" / "config.pbtxt").is_file()


def test_wrong_activation_claim_is_refused(layouts_repo, capsys, tmp_path):
    err = _refused(capsys, ["--keras", str(layouts_repo[0] / "rank5.keras"), "--anchors", "yolov4-tiny",
                            "--activated", "obj"], tmp_path)
    assert "declared activated" in err and "drop them from --activated" in err, err


def test_extra_columns_need_their_positions(layouts_repo, capsys, tmp_path, default_model):
    licht = str(layouts_repo[0] / "licht.keras")
    err = _refused(capsys, ["--keras", licht, "--box-format", "cxcywh", "--normalized-boxes", "--has-objectness",
                            "--names", str(default_model.names)], tmp_path)
    assert "names file has 80 names" in err and "--class-column" in err, err
    err = _refused(capsys, ["--keras", licht, "--box-format", "cxcywh", "--objectness-column", "8",
                            "--class-column", "9", "--names", str(default_model.names)], tmp_path)
    assert "--normalized-boxes" in err, err  # boxes in [0, 1] read as pixels: the gate sees sub-pixel boxes


def test_nms_model_needs_box_format_and_class_count(layouts_repo, capsys, tmp_path):
    nms = str(layouts_repo[0] / "nms")
    assert "--box-format" in _refused(capsys, ["--keras", nms], tmp_path)
    assert "--names or --num-classes" in _refused(capsys, ["--keras", nms, "--box-format", "yxyx",
                                                            "--normalized-boxes"], tmp_path)


def test_batchnorm_mish_savedmodel_builds(tmp_path, photos):
    """tf.keras 2 BatchNormalization + Mish: grappler's remapper fused them for oneDNN and the SavedModel's
    first run failed ("Fusion is not implemented: [FusedBatchNorm,Mish]") before the importer turned it off."""
    import tensorflow as tf
    import tf_keras as k2

    inp = k2.Input((64, 64, 3))
    x = inp
    for f in (16, 32):
        x = k2.layers.Conv2D(f, 3, strides=2, padding="same", use_bias=False)(x)
        x = k2.layers.BatchNormalization()(x)
        x = k2.layers.Activation("mish")(x)
    head = lambda: k2.layers.Conv2D(3 * 7, 1, bias_initializer=k2.initializers.Constant(-6.0))
    fine = head()(x)
    y = k2.layers.Activation("mish")(k2.layers.BatchNormalization()(k2.layers.Conv2D(32, 3, strides=2,
                                                                                     padding="same")(x)))
    tf.saved_model.save(k2.Model(inp, [fine, head()(y)]), str(tmp_path / "sm"))
    out = tmp_path / "repo"
    assert build_repo.main(["--keras", str(tmp_path / "sm"), "--anchors", "10,14,23,27,37,58,81,82,135,169,344,319",
                            "--output", str(out), "--parity-images", *map(str, photos[:2])]) == 0
    assert (out / "yolov4_detector" / "1" / "model.onnx").is_file()


def test_lambda_h5_loads_with_custom_objects_or_says_how(tmp_path, capsys, photos):
    import tf_keras as k2

    helper = tmp_path / "yolo_helpers.py"
    helper.write_text("import tensorflow as tf\n\ndef shift(x):\n    return x - 6.0\n")
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("yolo_helpers", helper)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    globals()["shift"] = mod.shift  # the lambdas below call the helper, as in the code that made the model
    inp = k2.Input((64, 64, 3))
    x = k2.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inp)
    fine = k2.layers.Lambda(lambda t: shift(t))(k2.layers.Conv2D(21, 1)(x))  # noqa: F821 (shift: the helper's)
    coarse = k2.layers.Lambda(lambda t: shift(t))(k2.layers.Conv2D(21, 1)(k2.layers.Conv2D(32, 3, strides=2,  # noqa
                                                                                          padding="same")(x)))
    path = tmp_path / "lambda.h5"
    k2.Model(inp, [fine, coarse]).save(path)
    del globals()["shift"]  # a user's build runs without the model's code
    sys.modules.pop("yolo_helpers", None)
    anchors = ["--anchors", "10,14,23,27,37,58,81,82,135,169,344,319", "--parity-images", *map(str, photos[:2])]
    err = _refused(capsys, ["--keras", str(path), *anchors], tmp_path)
    assert "--custom-objects" in err and "SavedModel" in err, err
    out = tmp_path / "repo"
    assert build_repo.main(["--keras", str(path), "--custom-objects", str(helper), *anchors, "--output", str(out)]) == 0


def test_every_score_passing_returns_promptly(server, photos):
    """score_threshold 0: every (box, class) pair of yolov4-tiny is a candidate (203k per photo). The pre-NMS
    cap (decode.PRE_NMS_TOP_K) keeps the request bounded; the client's 30 s timeout is the bound here."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = np.array([[p.read_bytes()] for p in photos[:2]], dtype=object)
    inp = grpcclient.InferInput("IMAGE", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    r = client.infer("yolov4", [inp], parameters={"score_threshold": 0.0}, client_timeout=30)
    assert r.as_numpy("boxes").shape == (2, 100, 4) and r.as_numpy("scores").shape == (2, 100)
    assert (r.as_numpy("num_detections")[:, 0] == 100).all()
