"""Runs inside the TF2 packages' own environment (scripts/tf2_packages_env.sh: tensorflow 2.15.1,
tensorflow-addons 0.23.0, tf2-yolov4 0.1.0 (sicara), tf-yolov4 1.0.4 (Licht-T), hhk7734's yolov4 3.2.0 and 2.1.0).

Makes each package's models with the package's own code and loaders, saves them as the package's users
would, and records the package's own inference on the pixels it is given, for tests/test_tf2_packages.py:

  python tests/tf2_packages.py OUT --weights608 W --tiny-cfg C --tiny-weights W --inputs inputs.npz

inputs.npz: x416 [n,416,416,3] (stretch, our preprocess), x608lb [n,608,608,3] (letterbox, fill 0, our
preprocess), sizes [n,2] (photo height, width). Writes OUT/<model>/ (SavedModel) and OUT/reference.npz.

The random darknet weights are given a trained model's output range the way the issue asks: the package's
own loader reads them, then the last convolutions (the ones feeding the YOLO heads) are scaled down and
their objectness and class biases set low, so a handful of boxes per photo pass 0.25 and most do not.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _trained_range(convs, run, num_classes: int, anchors: int = 3, seed: int = 0, wider: float = 1.0):
    """The head convolutions' outputs brought to a trained model's range: per channel, the logits over a photo
    (`run()` calls the model once on it) centred on a chosen bias and scaled so the 99.9th percentile of its deviation is 5, the
    biases chosen so objectness and class scores sit low and a handful of boxes per photo pass 0.25."""
    assert len(convs) == 3, f"expected the 3 head convolutions, found {len(convs)}"
    rng = np.random.default_rng(seed)
    seen = {}
    for conv in convs:
        kernel, bias = conv.get_weights()
        conv.set_weights([kernel, np.zeros_like(bias)])
        original = conv.call
        conv.call = lambda x, conv=conv, original=original: seen.setdefault(id(conv), original(x))
    run()
    for conv in convs:
        del conv.call
        kernel, _ = conv.get_weights()
        out = np.asarray(seen[id(conv)]).reshape(-1, kernel.shape[-1])
        centre = np.median(out, axis=0)  # per channel: random weights put some channels far off zero
        # random weights give heavy tails: the 99.9th percentile of the deviation maps to a logit of 5
        spread = float(np.percentile(np.abs(out - centre), 99.9)) / 5 or 1.0
        spread *= wider
        base = np.zeros((anchors, 5 + num_classes))
        base[:, 0:4] = rng.normal(0, 0.3, (anchors, 4))
        base[:, 4] = -2.0
        base[:, 5:] = rng.normal(-3.5, 1.0, (anchors, num_classes))
        conv.set_weights([kernel / spread, (base.reshape(-1) - centre / spread).astype(np.float32)])


def sicara(out: Path, weights608: Path, x416: np.ndarray, ref: dict):
    import tensorflow as tf
    from tf2_yolov4.anchors import YOLOV4_ANCHORS
    from tf2_yolov4.model import YOLOv4
    from tf2_yolov4.tools.convert_darknet_weights import convert_darknet_weights

    h5 = out / "sicara-from-darknet.h5"
    convert_darknet_weights.callback(str(weights608), str(h5))  # the package's own darknet-weights converter
    inference = YOLOv4(input_shape=(416, 416, 3), num_classes=80, anchors=YOLOV4_ANCHORS, training=False,
                       yolo_max_boxes=100, yolo_iou_threshold=0.45, yolo_score_threshold=0.25)
    inference.load_weights(str(h5))
    head = inference.get_layer("YOLOv3_head")
    _trained_range([l for l in head.layers if isinstance(l, tf.keras.layers.Conv2D) and l.filters == 255],
                   lambda: inference(x416[:1]), 80, wider=1.5)  # 23-29 boxes per photo, under its cap of 100
    inference.save(str(out / "sicara_inference"))  # a SavedModel, as tf.keras 2.15 saves a folder
    boxes, scores, classes, count = inference.predict(x416, verbose=0)
    ref.update(sicara_boxes=boxes, sicara_scores=scores, sicara_classes=classes, sicara_count=count)
    training = YOLOv4(input_shape=(416, 416, 3), num_classes=80, anchors=YOLOV4_ANCHORS, training=True)
    training.set_weights(inference.get_weights())  # the same layers; only the head's last steps differ
    training.save(str(out / "sicara_training"))
    ref["sicara_training_heads"] = [np.asarray(t).shape for t in training.predict(x416[:1], verbose=0)]


def licht_t(out: Path, weights608: Path, x608lb: np.ndarray, sizes: np.ndarray, ref: dict):
    import tensorflow as tf
    import yolov4 as licht  # tf-yolov4 installs the module `yolov4`
    from yolov4.util import image_util

    class YOLOv4(licht.YOLOv4):
        """The package's class, its xy_scales as float32: it builds them as a float64 numpy array, which TF 2.15
        passes into its decode as a float64 tensor ("'Mul' Op has type float32 that does not match float64"),
        so the unmodified class fails in its own constructor. Same values, nothing else changed."""

        def init_model(self):
            self.xy_scales = self.xy_scales.astype(np.float32)
            super().init_model()

    model = YOLOv4(num_classes=80)
    model.load_darknet_weights(str(weights608))  # the package's own darknet loader
    convs = [l._conv for l in (model.model.sequential_small_bbox, model.model.sequential_medium_bbox,
                               model.model.sequential_large_bbox) for l in [l.layers[-1]]]
    _trained_range(convs, lambda: model.model(x608lb[:1]), 80, seed=1)

    @tf.function(input_signature=[tf.TensorSpec([None, 608, 608, 3], tf.float32)])
    def serve(images):
        return {"output_0": model.model(images)}

    tf.saved_model.save(model.model, str(out / "licht_t"), signatures={"serving_default": serve})
    # The package's own predict() on our letterboxed pixels: its preprocess is swapped for ours (same geometry,
    # tf.image.resize_with_pad's: centred, fill 0), everything after it is the package's code. Run twice:
    # - as it is ("licht"). It runs its NMS over every box, those wholly in the letterbox padding too, keeps
    #   the best 50, and only then drops boxes whose x2 * y2 <= 0 (wholly above or left of the photo): where
    #   padding boxes score high it returns fewer boxes, and it keeps those wholly right of or below the photo;
    # - with TensorFlow's combined_non_max_suppression, which its predict() calls, given every box wholly outside
    #   the photo at score 0 ("licht_onphoto"): what the served pipeline does, which drops those boxes before
    #   top-K and NMS. Nothing else differs.
    real_nms = tf.image.combined_non_max_suppression
    photo = {}

    def on_photo_nms(boxes, scores, *args, **kwargs):  # boxes [1, N, 1, 4]: x1, y1, x2, y2 in photo pixels
        b = np.asarray(boxes).reshape(-1, 4)
        off = (b[:, 2] <= 0) | (b[:, 0] >= photo["w"]) | (b[:, 3] <= 0) | (b[:, 1] >= photo["h"])
        return real_nms(boxes, np.where(off[None, :, None], 0, scores).astype(np.float32), *args, **kwargs)

    for key, nms in (("licht", real_nms), ("licht_onphoto", on_photo_nms)):
        results = {"boxes": [], "scores": [], "classes": []}
        tf.image.combined_non_max_suppression = nms
        try:
            for x, (h, w) in zip(x608lb, sizes):
                photo.update(h=int(h), w=int(w))
                image_util.preprocess = lambda image, size, x=x: tf.constant(x)
                frame = np.zeros((int(h), int(w), 3), np.uint8)  # only its shape is read after the preprocess
                b, c, s = model.predict(frame)
                results["boxes"].append(b)
                results["classes"].append(c)
                results["scores"].append(s)
        finally:
            tf.image.combined_non_max_suppression = real_nms
        n = max(1, max(len(b) for b in results["boxes"]))
        pad = lambda a, shape: np.concatenate([a, np.zeros((n - len(a), *shape), a.dtype)]) if len(a) < n else a
        ref.update({f"{key}_boxes": np.stack([pad(np.asarray(b, np.float32).reshape(-1, 4), (4,)) for b in results["boxes"]]),
                    f"{key}_scores": np.stack([pad(np.asarray(s, np.float32), ()) for s in results["scores"]]),
                    f"{key}_classes": np.stack([pad(np.asarray(c, np.int64), ()) for c in results["classes"]]),
                    f"{key}_count": np.array([len(b) for b in results["boxes"]])})


def _cfg_hhk7734_reads(cfg: Path, copy: Path, yolo) -> Path:
    """The official cfg less the options hhk7734's parser refuses (darknet's training keys such as
    [net] subdivisions): each refusal names one; that option is dropped from a copy and the parse retried."""
    import re

    lines = cfg.read_text().splitlines()
    for _ in range(100):
        copy.write_text("\n".join(lines) + "\n")
        try:
            yolo.config.parse_cfg(str(copy))
            return copy
        except RuntimeError as e:
            m = re.search(r"\[(\w+?)(?:_\d+)?\] '(\w+)' is not supported", str(e))
            if not m:
                raise
            section, option = m.groups()
            current, keep = None, []
            for line in lines:
                if line.strip().startswith("["):
                    current = line.strip()[1:-1]
                if current == section and line.split("=")[0].strip() == option:
                    continue
                keep.append(line)
            lines = keep
    raise RuntimeError("hhk7734's parser kept refusing the cfg")


def hhk7734(out: Path, cfg: Path, weights: Path, names: Path, x416: np.ndarray, ref: dict):
    """hhk7734's yolov4 3.2.0 (its own module `yolov4.tf`, installed apart: both packages call it yolov4)."""
    import tensorflow as tf
    from yolov4.tf import YOLOv4

    yolo = YOLOv4()
    yolo.config.parse_names(str(names))
    cfg = _cfg_hhk7734_reads(cfg, out / "yolov4-tiny.cfg", yolo)
    yolo.make_model()
    yolo.load_weights(str(weights), weights_type="yolo")  # the pretrained yolov4-tiny: trained weights
    shape = yolo.config.net.input_shape

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32)])
    def serve(images):
        return {f"output_{i}": t for i, t in enumerate(yolo.model(images, training=False))}

    tf.saved_model.save(yolo.model, str(out / "hhk7734"), signatures={"serving_default": serve})
    heads = [np.array(t, np.float32) for t in yolo.model(x416, training=False)]
    ref["hhk_candidates"] = [yolo.get_yolo_detections(yolos=[h[i:i + 1].copy() for h in heads], prob_thresh=0.25)
                             for i in range(len(x416))]


def hhk7734_v2(out: Path, weights: Path, names: Path, x416lb: np.ndarray, ref: dict):
    """hhk7734's yolov4 2.1.0 (installed apart, like 3.2.0): its YOLOv4(tiny=True) with the pretrained yolov4-tiny
    through its own darknet-weights loader, saved as its README saves (model.save(DIR): a SavedModel), and its own
    predict() on our letterboxed pixels (white padding, as its resize_image pads): _predict, then
    candidates_to_pred_bboxes (best class per box above 0.25, boxes wholly inside the input and over 4 px, its
    DIoU-NMS at its default 0.3). Its heads are head-shaped with decoded values (bxby, bwbh normalized)."""
    from yolov4.tf import YOLOv4

    yolo = YOLOv4(tiny=True)
    yolo.classes = str(names)
    yolo.input_size = 416
    yolo.make_model()
    yolo.load_weights(str(weights), weights_type="yolo")
    yolo.model.save(str(out / "hhk7734_v2"))
    ref["hhk2_pred"] = [yolo.candidates_to_pred_bboxes(yolo._predict(x416lb[i:i + 1]).numpy()[0])
                        for i in range(len(x416lb))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--which", default="sicara,licht,hhk")
    ap.add_argument("--keep", action="store_true", help="skip models already in OUT")
    ap.add_argument("--weights608", type=Path)
    ap.add_argument("--tiny-cfg", type=Path)
    ap.add_argument("--tiny-weights", type=Path)
    ap.add_argument("--names", type=Path)
    ap.add_argument("--inputs", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf

    # grappler's remapper fuses BatchNorm + Mish for oneDNN, which then fails at run time on these CPUs
    # ("Fusion is not implemented: [FusedBatchNorm,Mish]"), inside the packages' own predict() too
    tf.config.optimizer.set_experimental_options({"remapping": False})
    inputs = np.load(args.inputs)
    ref: dict = {}
    which = args.which.split(",")
    if "sicara" in which:
        sicara(args.out, args.weights608, inputs["x416"], ref)
    if "licht" in which:
        licht_t(args.out, args.weights608, inputs["x608lb"], inputs["sizes"], ref)
    if "hhk" in which:
        hhk7734(args.out, args.tiny_cfg, args.tiny_weights, args.names, inputs["x416"], ref)
    if "hhk2" in which:
        hhk7734_v2(args.out, args.tiny_weights, args.names, inputs["x416lb1"], ref)
    np.savez(args.out / "reference.npz", **{k: np.asarray(v, dtype=object) if isinstance(v, list) else v
                                            for k, v in ref.items()})
    print("made:", ", ".join(sorted(p.name for p in args.out.iterdir())), flush=True)


if __name__ == "__main__":
    sys.exit(main())
