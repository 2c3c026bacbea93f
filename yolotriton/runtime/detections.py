"""Final detections: a batch's decoder outputs -> per image, boxes in the photo's own pixels after NMS and top-K.

This package (runtime/) is copied into the model that runs NMS in every rendered repository (the postprocess,
or the Python detector with `--nms detector`), and the in-process pipeline and tests import it from
yolotriton.runtime, so served and local results come from the same code. The pieces: decode.py (outputs ->
candidates), nms.py (the NMS rule), settings.py (thresholds and what a request may override); here they are
put together per image: letterbox padding dropped, the pre-NMS cap, NMS, the best K, boxes back to the photo.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np

from . import nms
from .decode import PRE_NMS_TOP_K, Candidates
from .settings import Settings, nms_options

META_FIELDS = ("orig_h", "orig_w", "scale_y", "scale_x", "pad_top", "pad_left")
FINAL_OUTPUTS = ("num_detections", "boxes", "scores", "classes")


class Decoder:
    """Turns a batch of raw or decoded detector outputs into padded top-K detections.

    `spec` is the `DetectorSpec` as a dict (its JSON). `from_candidates`: the detector already decoded its heads
    into decode.CANDIDATE_OUTPUTS. The NMS rule: settings.NMS_KINDS; best_class_only: after NMS each box keeps
    only its best surviving class (hhk7734's yolov4 does so), instead of every class above the threshold.
    """

    def __init__(self, spec: dict, pre_nms_top_k: int = PRE_NMS_TOP_K, from_candidates: bool = False,
                 nms_kind: str = "greedy", beta_nms: float = 0.6, best_class_only: bool = False,
                 best_class_first: bool = False, inside_input_only: bool = False):
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.candidates = Candidates(spec, from_candidates)
        self.nms_kind, self.beta_nms, self.best_class_only = nms_kind, float(beta_nms), bool(best_class_only)
        self.best_class_first = bool(best_class_first)  # each box's best class only, before NMS (hhk7734 2.x)
        self.inside_input_only = bool(inside_input_only)  # only boxes wholly inside the input, over 4 px (likewise)
        self.height, self.width = int(spec["input_height"]), int(spec["input_width"])
        self.nms_applied = self.candidates.nms_applied

    @property
    def output_names(self) -> list[str]:
        return self.candidates.output_names

    def network_meta(self, n: int) -> np.ndarray:
        """META_FIELDS for n images that are the network input itself (no resize, no padding): boxes stay in the
        network's pixels (the accuracy gates compare two runs on the same batch)."""
        return np.tile(np.array([[self.height, self.width, 1, 1, 0, 0]], np.float32), (n, 1))

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
            if self.inside_input_only and not self.nms_applied:
                w, h = bb[:, 2] - bb[:, 0], bb[:, 3] - bb[:, 1]
                ok = (bb[:, 0] >= 0) & (bb[:, 1] >= 0) & (bb[:, 2] <= self.width) & (bb[:, 3] <= self.height) & \
                    (w > 4) & (h > 4)
                bb, ss, cc = bb[ok], ss[ok], cc[ok]
            if self.best_class_first and not self.nms_applied:
                first = nms.best_class(bb, ss, np.arange(len(ss)))
                bb, ss, cc = bb[first], ss[first], cc[first]
            if len(ss) > self.pre_nms_top_k:  # bounded work, whatever the model says
                top = np.argpartition(-ss, self.pre_nms_top_k)[:self.pre_nms_top_k]
                bb, ss, cc = bb[top], ss[top], cc[top]
            if self.nms_applied:
                keep = np.arange(len(ss))
            else:
                keep = nms.class_aware(bb, ss, cc, score_threshold, iou_threshold, self.nms_kind, self.beta_nms,
                                       (self.width, self.height), self.best_class_only)
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


class Postprocessor:
    """The served postprocess of one request: a Decoder with the model's configured thresholds, which the
    request may override through its parameters (OVERRIDABLE; max_detections at most the configured one).

    `params` are the model config's string parameters (score_threshold, iou_threshold, max_detections and
    inputs: "candidates" when the detector decoded its heads). Used by the postprocess model and, with
    `--nms detector`, by the Python detector itself.
    """

    def __init__(self, spec: dict, params: dict[str, str]):
        self.decoder = Decoder(spec, from_candidates=params.get("inputs") == "candidates", **nms_options(params))
        limits = Settings(params)
        self.settings, self.defaults = limits.settings, limits.defaults  # settings(request_parameters) -> checked

    @classmethod
    def in_model_folder(cls, folder: str, params: dict[str, str]) -> "Postprocessor":
        """The served model's: spec.json from its version folder, and OpenCV on one thread (the NMS of one
        request at a time per stub instance; the cores belong to the other instances)."""
        with open(os.path.join(folder, "spec.json")) as f:
            post = cls(json.load(f), params)
        cv2.setNumThreads(1)
        return post

    def __call__(self, outputs: dict[str, np.ndarray], meta: np.ndarray, s: dict):
        """{name: array} of FINAL_OUTPUTS for one request, always padded to the configured max_detections."""
        num, boxes, scores, classes = self.decoder(outputs, meta, s["score_threshold"], s["iou_threshold"],
                                                   self.defaults["max_detections"])
        if s["max_detections"] < self.defaults["max_detections"]:  # fewer kept, same output shape
            k = s["max_detections"]
            num = np.minimum(num, k)
            boxes[:, k:], scores[:, k:], classes[:, k:] = 0, 0, -1
        return dict(zip(FINAL_OUTPUTS, (num, boxes, scores, classes)))
