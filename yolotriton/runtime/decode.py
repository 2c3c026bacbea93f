"""Decode a detector's outputs into candidates: (image index, box x1,y1,x2,y2 in network-input pixels, score,
class) for every (box, class) pair above a score threshold, from raw YOLO heads (darknet's [yolo] arithmetic, any
of its groups already activated), decoded layouts (boxes + scores, one detections tensor, a model's own NMS), or
the top-K candidates the detector already decoded on the GPU (candidates_graph.py's outputs).

Work is vectorised per batch: objectness is thresholded first, so class sigmoids and box decoding touch only
the few candidates that can still pass (10,647 x 80 scores for YOLOv4-416 would cost milliseconds; the
survivors cost microseconds).
"""
from __future__ import annotations

import numpy as np

# At most this many (box, class) candidates per image go into NMS, the best-scoring ones: whatever a model
# outputs (a wrong layout, a score threshold of 0), a request costs milliseconds, not minutes.
PRE_NMS_TOP_K = 4096
# What the detector hands over when it decoded the heads itself (candidates_graph.py, `--decode detector`):
# the best K (box, class) pairs per image, boxes x1,y1,x2,y2 in network pixels, scores best first.
CANDIDATE_OUTPUTS = ("candidate_boxes", "candidate_scores", "candidate_classes")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _columns(d: dict) -> tuple[int, int, int]:
    """(box, objectness or -1, first class) column of a `detections` tensor (spec.DecodedLayout.columns)."""
    obj = int(d.get("objectness_column", -1))
    if obj < 0 and d.get("has_objectness"):
        obj = 4
    box = int(d.get("box_column", 0))
    cls = int(d.get("class_column", -1))
    return box, obj, cls if cls >= 0 else max(box + 4, obj + 1)


class Candidates:
    """`candidates(outputs, score_threshold)` for a batch. `spec` is the DetectorSpec as a dict (its JSON), so this
    runs where TensorFlow is absent; `from_candidates`: the outputs are CANDIDATE_OUTPUTS."""

    def __init__(self, spec: dict, from_candidates: bool = False):
        self.from_candidates = bool(from_candidates)
        self.height, self.width = int(spec["input_height"]), int(spec["input_width"])
        self.num_classes = int(spec["num_classes"])
        self.heads = []
        for h in spec.get("heads") or ():
            gh, gw = h["grid"]
            ys, xs = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
            self.heads.append({
                "name": h["name"], "anchors": np.asarray(h["anchors"], np.float32), "stride": float(h["stride"]),
                "grid": (gh, gw), "sxy": float(h.get("scale_x_y", 1.0)), "new_coords": bool(h.get("new_coords")),
                "activated": set(h.get("activated") or ()), "sxy_applied": bool(h.get("scale_x_y_applied")),
                "gx": xs, "gy": ys,
            })
        self.decoded = spec.get("decoded")
        self.nms_applied = bool(self.decoded) and len(self.decoded["outputs"]) == 4  # nms_boxes, _scores, _classes, _count

    @property
    def output_names(self) -> list[str]:
        if self.from_candidates:
            return list(CANDIDATE_OUTPUTS)
        return [h["name"] for h in self.heads] if self.heads else list(self.decoded["outputs"])

    def __call__(self, outputs: dict[str, np.ndarray], score_threshold: float):
        """(image index, box xyxy in network pixels, score, class) for every (box, class) above threshold."""
        if self.from_candidates:
            scores = outputs["candidate_scores"]
            bi, ki = np.nonzero(scores > score_threshold)
            return bi, outputs["candidate_boxes"][bi, ki], scores[bi, ki], \
                outputs["candidate_classes"][bi, ki].astype(np.int64)
        if self.heads:
            parts = [self._raw_head(outputs[h["name"]], h, score_threshold) for h in self.heads]
            return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))
        return self._decoded(outputs, score_threshold)

    def _raw_head(self, out: np.ndarray, h: dict, thr: float):
        b, gh, gw = out.shape[0], out.shape[1], out.shape[2]
        a = len(h["anchors"])
        t = out.reshape(b, gh, gw, a, 5 + self.num_classes)
        done = {"xy", "obj", "cls"} if h["new_coords"] else h["activated"]  # groups the model already decoded
        obj = t[..., 4] if "obj" in done else _sigmoid(t[..., 4])
        bi, yi, xi, ai = np.nonzero(obj > thr)  # score = obj * cls <= obj: nothing else can pass
        sel = t[bi, yi, xi, ai].astype(np.float32, copy=False)  # [n, 5+C]
        o = obj[bi, yi, xi, ai][:, None]
        xy = sel[:, 0:2] if "xy" in done else _sigmoid(sel[:, 0:2])
        cls = sel[:, 5:] if "cls" in done else _sigmoid(sel[:, 5:])
        if h["new_coords"]:
            wh = (2.0 * sel[:, 2:4]) ** 2
        else:
            wh = sel[:, 2:4] if "wh" in done else np.exp(sel[:, 2:4])
        s = h["sxy"]
        offset = xy if h["sxy_applied"] else xy * s - 0.5 * (s - 1)
        cx = (offset[:, 0] + h["gx"][yi, xi]) * (self.width / gw)
        cy = (offset[:, 1] + h["gy"][yi, xi]) * (self.height / gh)
        anc = h["anchors"][ai]
        w, hh = wh[:, 0] * anc[:, 0], wh[:, 1] * anc[:, 1]
        scores = o * cls
        ci, ki = np.nonzero(scores > thr)  # multi-label, as darknet: each class above threshold is a candidate
        boxes = np.stack([cx - w / 2, cy - hh / 2, cx + w / 2, cy + hh / 2], axis=1)[ci]
        return bi[ci], boxes, scores[ci, ki], ki

    def _decoded(self, outputs, thr):
        d = self.decoded
        if self.nms_applied:  # the model's own NMS: its first `count` rows per image are the detections
            boxes, scores = outputs["nms_boxes"], outputs["nms_scores"]
            count = np.asarray(outputs["nms_count"]).reshape(len(boxes), -1)[:, 0].astype(np.int64)
            valid = np.arange(scores.shape[1])[None, :] < count[:, None]
            bi, ni = np.nonzero(valid & (scores > thr))
            return bi, self._to_xyxy(boxes[bi, ni].astype(np.float32)), scores[bi, ni], \
                outputs["nms_classes"][bi, ni].astype(np.int64)
        if tuple(d["outputs"]) == ("detections",):
            det = outputs["detections"]
            box_col, obj_col, cls_col = _columns(d)
            boxes, scores = det[..., box_col:box_col + 4], det[..., cls_col:cls_col + self.num_classes]
            if obj_col >= 0:
                scores = det[..., obj_col:obj_col + 1] * scores
        else:
            boxes, scores = outputs["decoded_boxes"], outputs["decoded_scores"]
            if d.get("has_objectness"):
                scores = scores[..., :1] * scores[..., 1:]
        bi, ni, ki = np.nonzero(scores > thr)
        return bi, self._to_xyxy(boxes[bi, ni].astype(np.float32)), scores[bi, ni, ki], ki

    def _to_xyxy(self, bx: np.ndarray) -> np.ndarray:
        """Boxes in the model's format -> x1, y1, x2, y2 in network-input pixels."""
        d = self.decoded
        fmt = d["box_format"]
        if fmt == "yxyx":
            bx = bx[:, [1, 0, 3, 2]]
        elif fmt == "cxcywh":
            bx = np.stack([bx[:, 0] - bx[:, 2] / 2, bx[:, 1] - bx[:, 3] / 2,
                           bx[:, 0] + bx[:, 2] / 2, bx[:, 1] + bx[:, 3] / 2], axis=1)
        if d.get("normalized"):
            bx = bx * np.array([self.width, self.height, self.width, self.height], np.float32)
        return bx
