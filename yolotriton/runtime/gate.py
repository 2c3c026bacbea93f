"""The accuracy gate's rule: two runs' detections on the same images agree (runtime/, so that a model can check
its own engine where it loads; the build checks FP16 against FP32 with the same rule, build/plan.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GateReport:
    images: int
    matched: int
    worst_iou: float
    worst_score_delta: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def match_detections(reference, other, score_threshold: float = 0.25, max_score_delta: float = 0.05,
                     min_iou: float = 0.9) -> GateReport:
    """The gate's rule on two decoders' results (num, boxes, scores, classes) for the same images: every detection
    scoring at least score_threshold + max_score_delta in either has a counterpart in the other."""
    (n32, b32, s32, c32), (n16, b16, s16, c16) = reference, other
    problems, matched, worst_iou, worst_delta = [], 0, 1.0, 0.0
    strong = score_threshold + max_score_delta
    for i in range(len(n32)):
        for (na, ba, sa, ca), (nb, bb, sb, cb), label in (((n32, b32, s32, c32), (n16, b16, s16, c16), "fp32"),
                                                        ((n16, b16, s16, c16), (n32, b32, s32, c32), "fp16")):
            for j in range(na[i, 0]):
                if sa[i, j] < strong:
                    continue
                cand = [k for k in range(nb[i, 0]) if cb[i, k] == ca[i, j]]
                ious = [_iou(ba[i, j], bb[i, k]) for k in cand]
                if not ious or max(ious) < min_iou:
                    problems.append(f"image {i}: {label} class {ca[i, j]} score {sa[i, j]:.3f} has no counterpart")
                    continue
                k = cand[int(np.argmax(ious))]
                delta = abs(float(sa[i, j] - sb[i, k]))
                worst_iou, worst_delta = min(worst_iou, max(ious)), max(worst_delta, delta)
                matched += label == "fp32"
                if delta > max_score_delta:
                    problems.append(f"image {i}: class {ca[i, j]} score {sa[i, j]:.3f} vs {sb[i, k]:.3f} in the other")
    return GateReport(len(n32), matched, worst_iou, worst_delta, problems)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
