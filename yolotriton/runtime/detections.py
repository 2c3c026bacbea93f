"""Decode YOLO outputs into final detections: numpy + OpenCV only.

This file is copied into the model that runs NMS in every rendered repository (the postprocess, or
the Python detector with `--nms detector`; the Triton Python backend imports it from the model
directory), and the in-process pipeline and tests import it from the package, so served and local
results come from the same code.

Work is vectorised per batch: objectness is thresholded first, so class sigmoids and box
decoding touch only the few candidates that can still pass (10,647 x 80 scores for YOLOv4-416
would cost milliseconds; the survivors cost microseconds). Class-aware NMS is OpenCV's
`NMSBoxesBatched` (darknet's greedynms), called once per image; darknet's diounms (`diou_nms`) on request.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np

META_FIELDS = ("orig_h", "orig_w", "scale_y", "scale_x", "pad_top", "pad_left")
# At most this many (box, class) candidates per image go into NMS, the best-scoring ones: whatever a model
# outputs (a wrong layout, a score threshold of 0), a request costs milliseconds, not minutes.
PRE_NMS_TOP_K = 4096
# What the detector hands over when it decoded the heads itself (candidates_graph.py, `--decode detector`):
# the best K (box, class) pairs per image, boxes x1,y1,x2,y2 in network pixels, scores best first.
CANDIDATE_OUTPUTS = ("candidate_boxes", "candidate_scores", "candidate_classes")
FINAL_OUTPUTS = ("num_detections", "boxes", "scores", "classes")
# What a request may change through its parameters (max_detections only down to 1, never above the configured).
OVERRIDABLE = ("score_threshold", "iou_threshold", "max_detections")
# The NMS rule (model config parameters; build_repo.py --nms-kind, --beta-nms, --best-class-only):
# "greedy": darknet's greedynms, class-aware IoU NMS (OpenCV's NMSBoxesBatched); "diou": darknet's diounms,
# which suppresses a box when IoU - (centre distance^2 / enclosing diagonal^2)^beta_nms exceeds the threshold.
NMS_KINDS = ("greedy", "diou")


def nms_options(params: dict[str, str]) -> dict:
    """Decoder keyword arguments for the NMS rule from a model config's string parameters (absent: greedy,
    darknet's beta_nms 0.6, every class above the threshold)."""
    kind = params.get("nms_kind", "greedy")
    if kind not in NMS_KINDS:
        raise ValueError(f"nms_kind {kind!r}: expected one of {', '.join(NMS_KINDS)}")
    return {"nms_kind": kind, "beta_nms": float(params.get("beta_nms", "0.6")),
            "best_class_only": params.get("best_class_only", "off") == "on"}


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


class Decoder:
    """Turns a batch of raw or decoded detector outputs into padded top-K detections.

    `spec` is the `DetectorSpec` as a dict (its JSON), so this runs where TensorFlow is absent.
    `from_candidates`: the detector already decoded its heads into CANDIDATE_OUTPUTS (candidates_graph.py).
    """

    def __init__(self, spec: dict, pre_nms_top_k: int = PRE_NMS_TOP_K, from_candidates: bool = False,
                 nms_kind: str = "greedy", beta_nms: float = 0.6, best_class_only: bool = False):
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.from_candidates = bool(from_candidates)
        # the NMS rule (NMS_KINDS); best_class_only: after NMS each box keeps only its best surviving class
        # (hhk7734's yolov4 does so), instead of every class above the threshold (darknet's detector output)
        self.nms_kind, self.beta_nms, self.best_class_only = nms_kind, float(beta_nms), bool(best_class_only)
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

    # ---------------------------------------------------------------- candidates
    def candidates(self, outputs: dict[str, np.ndarray], score_threshold: float):
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

    # ---------------------------------------------------------------- final detections
    def __call__(self, outputs: dict[str, np.ndarray], meta: np.ndarray, score_threshold: float,
                 iou_threshold: float, max_detections: int):
        """Return num [B,1] int32, boxes [B,K,4] float32 (x1,y1,x2,y2 original pixels), scores [B,K], classes [B,K] int32.

        `meta` is [B, 6] in META_FIELDS order (from the preprocess). Unused slots: boxes/scores 0, classes -1.
        """
        batch = meta.shape[0]
        k = int(max_detections)
        num = np.zeros((batch, 1), np.int32)
        out_boxes = np.zeros((batch, k, 4), np.float32)
        out_scores = np.zeros((batch, k), np.float32)
        out_classes = np.full((batch, k), -1, np.int32)
        bi, boxes, scores, classes = self.candidates(outputs, score_threshold)
        for b in range(batch):
            m = bi == b
            if not m.any():
                continue
            bb, ss, cc = boxes[m], scores[m], classes[m]
            if meta[b, 4] > 0 or meta[b, 5] > 0:  # letterbox: a box wholly in the padding shows no photo
                inside = self._on_photo(bb, meta[b])
                bb, ss, cc = bb[inside], ss[inside], cc[inside]
            if len(ss) > self.pre_nms_top_k:  # bounded work, whatever the model says
                top = np.argpartition(-ss, self.pre_nms_top_k)[:self.pre_nms_top_k]
                bb, ss, cc = bb[top], ss[top], cc[top]
            if self.nms_applied:
                keep = np.arange(len(ss))
            elif self.nms_kind == "diou":
                keep = diou_nms(bb / np.array([self.width, self.height] * 2, np.float32), ss, cc, iou_threshold,
                                self.beta_nms)
            else:
                xywh = np.concatenate([bb[:, :2], bb[:, 2:] - bb[:, :2]], axis=1)
                keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, ss, cc, score_threshold, iou_threshold),
                                  np.int64).ravel()
            if self.best_class_only and not self.nms_applied:
                keep = best_class(bb, ss, keep)
            keep = keep[np.argsort(-ss[keep], kind="stable")][:k]
            n = len(keep)
            num[b, 0] = n
            out_boxes[b, :n] = self._to_original(bb[keep], meta[b])
            out_scores[b, :n] = ss[keep]
            out_classes[b, :n] = cc[keep]
        return num, out_boxes, out_scores, out_classes

    @staticmethod
    def _on_photo(boxes: np.ndarray, meta: np.ndarray) -> np.ndarray:
        """Boxes (network-input pixels) that overlap the letterboxed photo, not only its padding: the rest would
        come back as zero-area boxes on the photo's edge."""
        orig_h, orig_w, sy, sx, pt, pl = (float(v) for v in meta)
        right, bottom = pl + orig_w * sx, pt + orig_h * sy
        return (boxes[:, 2] > pl) & (boxes[:, 0] < right) & (boxes[:, 3] > pt) & (boxes[:, 1] < bottom)

    @staticmethod
    def _to_original(boxes: np.ndarray, meta: np.ndarray) -> np.ndarray:
        orig_h, orig_w, sy, sx, pt, pl = (float(v) for v in meta)
        with np.errstate(divide="ignore", invalid="ignore"):  # zero scales: Triton's warm-up request (zero meta)
            out = (boxes - np.array([pl, pt, pl, pt], np.float32)) / np.array([sx, sy, sx, sy], np.float32)
        np.clip(out[:, 0::2], 0, orig_w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, orig_h, out=out[:, 1::2])
        return out


def diou_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float, beta: float) -> np.ndarray:
    """darknet's diounms, class by class: best score first, a box is dropped when its DIoU with a kept box of
    its class, IoU - (d^2 / c^2)^beta (d: distance between the centres, c: diagonal of the smallest box
    enclosing both), exceeds `threshold`. Boxes x1, y1, x2, y2 in input-relative coordinates, as darknet's.
    Returns the kept indices. (OpenCV and ONNX Runtime have IoU NMS only.)"""
    keep = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        b = boxes[idx].astype(np.float32)
        alive = np.ones(len(idx), bool)
        for i in range(len(idx)):
            if not alive[i]:
                continue
            keep.append(idx[i])
            rest = np.flatnonzero(alive[i + 1:]) + i + 1
            if not len(rest):
                break
            a, o = b[i], b[rest]
            in_w = np.minimum(a[2], o[:, 2]) - np.maximum(a[0], o[:, 0])
            in_h = np.minimum(a[3], o[:, 3]) - np.maximum(a[1], o[:, 1])
            inter = np.where((in_w > 0) & (in_h > 0), in_w * in_h, 0)
            union = (a[2] - a[0]) * (a[3] - a[1]) + (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1]) - inter
            out_w = np.maximum(a[2], o[:, 2]) - np.minimum(a[0], o[:, 0])
            out_h = np.maximum(a[3], o[:, 3]) - np.minimum(a[1], o[:, 1])
            diag = out_w ** 2 + out_h ** 2
            dist = ((a[0] + a[2]) - (o[:, 0] + o[:, 2])) ** 2 / 4 + ((a[1] + a[3]) - (o[:, 1] + o[:, 3])) ** 2 / 4
            with np.errstate(divide="ignore", invalid="ignore"):
                diou = np.where(union > 0, inter / union, 0) - np.where(diag > 0, (dist / diag) ** beta, 0)
            alive[rest[diou > threshold]] = False
    return np.asarray(keep, np.int64)


def best_class(boxes: np.ndarray, scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Of the kept (box, class) pairs, each box's best-scoring class only (a box's pairs share its coordinates)."""
    if len(keep) == 0:
        return keep
    _, box_id = np.unique(boxes[keep], axis=0, return_inverse=True)
    order = np.lexsort((-scores[keep], box_id.ravel()))  # by box, best score first
    first = np.ones(len(order), bool)
    first[1:] = box_id.ravel()[order][1:] != box_id.ravel()[order][:-1]
    return keep[order[first]]


class Postprocessor:
    """The served postprocess of one request: a Decoder with the model's configured thresholds, which the
    request may override through its parameters (OVERRIDABLE; max_detections at most the configured one).

    `params` are the model config's string parameters (score_threshold, iou_threshold, max_detections and
    inputs: "candidates" when the detector decoded its heads). Used by the postprocess model and, with
    `--nms detector`, by the Python detector itself.
    """

    def __init__(self, spec: dict, params: dict[str, str]):
        self.decoder = Decoder(spec, from_candidates=params.get("inputs") == "candidates", **nms_options(params))
        self.defaults = {"score_threshold": float(params["score_threshold"]),
                         "iou_threshold": float(params["iou_threshold"]),
                         "max_detections": int(params["max_detections"])}

    @classmethod
    def in_model_folder(cls, folder: str, params: dict[str, str]) -> "Postprocessor":
        """The served model's: spec.json from its version folder, and OpenCV on one thread (the NMS of one
        request at a time per stub instance; the cores belong to the other instances)."""
        with open(os.path.join(folder, "spec.json")) as f:
            post = cls(json.load(f), params)
        cv2.setNumThreads(1)
        return post

    def settings(self, request_parameters: str) -> dict:
        """The settings of a request whose parameters are `request_parameters` (Triton's JSON text, maybe empty);
        ValueError/TypeError for text that is not JSON or a value out of range or of the wrong type."""
        parameters = json.loads(request_parameters or "{}")
        s = dict(self.defaults)
        for key in OVERRIDABLE:
            if key in parameters:
                s[key] = type(self.defaults[key])(parameters[key])
        if not 0.0 <= s["score_threshold"] <= 1.0 or not 0.0 <= s["iou_threshold"] <= 1.0:
            raise ValueError(f"thresholds must lie in [0, 1], got score {s['score_threshold']}, iou {s['iou_threshold']}")
        if not 1 <= s["max_detections"] <= self.defaults["max_detections"]:
            raise ValueError(f"max_detections must be 1..{self.defaults['max_detections']}, got {s['max_detections']}")
        return s

    def __call__(self, outputs: dict[str, np.ndarray], meta: np.ndarray, s: dict):
        """{name: array} of FINAL_OUTPUTS for one request, always padded to the configured max_detections."""
        num, boxes, scores, classes = self.decoder(outputs, meta, s["score_threshold"], s["iou_threshold"],
                                                   self.defaults["max_detections"])
        if s["max_detections"] < self.defaults["max_detections"]:  # fewer kept, same output shape
            k = s["max_detections"]
            num = np.minimum(num, k)
            boxes[:, k:], scores[:, k:], classes[:, k:] = 0, 0, -1
        return dict(zip(FINAL_OUTPUTS, (num, boxes, scores, classes)))
