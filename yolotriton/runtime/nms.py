"""NMS over one image's candidates: darknet's greedynms (class-aware IoU NMS, OpenCV's NMSBoxesBatched) or its
diounms, and optionally one class a box, as the kept indices."""
from __future__ import annotations

import cv2
import numpy as np


def class_aware(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, score_threshold: float,
                iou_threshold: float, kind: str = "greedy", beta: float = 0.6, input_wh=(1, 1),
                best_class_only: bool = False) -> np.ndarray:
    """Kept indices into one image's candidates (boxes x1,y1,x2,y2 in network pixels). `input_wh` scales boxes to
    the input-relative coordinates darknet's diounms works in."""
    if kind == "diou":
        keep = diou_nms(boxes / np.array(list(input_wh) * 2, np.float32), scores, classes, iou_threshold, beta)
    else:
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, scores, classes, score_threshold, iou_threshold),
                          np.int64).ravel()
    return best_class(boxes, scores, keep) if best_class_only else keep


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
