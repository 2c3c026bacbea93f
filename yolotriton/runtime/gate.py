"""The accuracy gate: its rule (two runs' detections on the same images agree), and the check a model makes of its own
engine where it loads, against the FP32 ONNX's detections the build stored (gate.npz). The build checks FP16 against
FP32 with the same rule (build/plan.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class GateReport:
    images: int
    matched: int
    worst_iou: float
    worst_score_delta: float
    problems: list[str]
    reference: tuple | None = field(default=None, repr=False)  # the first run's detections, where a caller keeps them

    @property
    def ok(self) -> bool:
        return not self.problems


def match_detections(reference, other, score_threshold: float = 0.25, max_score_delta: float = 0.05,
                     min_iou: float = 0.9, names=("fp32", "fp16")) -> GateReport:
    """The gate's rule on two decoders' results (num, boxes, scores, classes) for the same images: every detection
    scoring at least score_threshold + max_score_delta in either has a counterpart in the other. `names`: what the
    two runs are, as the problems name them."""
    problems, matched, worst_iou, worst_delta = [], 0, 1.0, 0.0
    strong = score_threshold + max_score_delta
    for i in range(len(reference[0])):
        for side, ((na, ba, sa, ca), (nb, bb, sb, cb)) in enumerate(((reference, other), (other, reference))):
            mine, theirs = names[side], names[1 - side]
            for j in range(na[i, 0]):
                if sa[i, j] < strong:
                    continue
                cand = [k for k in range(nb[i, 0]) if cb[i, k] == ca[i, j]]
                ious = [_iou(ba[i, j], bb[i, k]) for k in cand]
                if not ious or max(ious) < min_iou:
                    problems.append(f"image {i}: {mine} class {ca[i, j]} score {sa[i, j]:.3f} has no counterpart")
                    continue
                k = cand[int(np.argmax(ious))]
                delta = abs(float(sa[i, j] - sb[i, k]))
                worst_iou, worst_delta = min(worst_iou, max(ious)), max(worst_delta, delta)
                matched += side == 0
                if delta > max_score_delta:
                    problems.append(f"image {i}: {mine} class {ca[i, j]} score {sa[i, j]:.3f}, {theirs} {sb[i, k]:.3f}")
    return GateReport(len(reference[0]), matched, worst_iou, worst_delta, problems)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


GATE_FILE = "gate.npz"  # in the detector's version folder: the build's photos and the FP32 ONNX's detections on them


class GateFailed(RuntimeError):
    """The engine that would serve changes the detections beyond the gate's tolerance: the model does not load.
    `finding`: what differed (the message without the refusal), for a caller that falls back instead."""

    def __init__(self, finding: str):
        super().__init__(f"{finding}: not serving. Rebuild with another --engine or --detector-precision fp32")
        self.finding = finding


def save(folder, images: np.ndarray, reference, spec_json: str, score_threshold: float, iou_threshold: float) -> None:
    """Write the load-time gate (build side): `images` the network-size batch (stored as FP16, which the reference
    must have been computed from), `reference` the FP32 ONNX's (num, boxes, scores, classes) on them."""
    num, boxes, scores, classes = reference
    np.savez_compressed(os.path.join(folder, GATE_FILE), images=images.astype(np.float16), num=num, boxes=boxes,
                        scores=scores, classes=classes, spec=np.array(spec_json),
                        thresholds=np.array([score_threshold, iou_threshold], np.float32))


def check_engine(engine, folder: str, from_candidates: bool, log=print) -> GateReport | None:
    """Run the build's gate photos through `engine` (what will serve, on the device it will serve on) and compare
    its detections with the FP32 ONNX's by the build's rule. None where the folder has no gate (CPU builds, whose
    engine the build itself ran); raises GateFailed, one line, where they differ."""
    import json

    from .detections import Decoder

    path = os.path.join(folder, GATE_FILE)
    if not os.path.isfile(path):
        return None
    with np.load(path) as data:
        images = data["images"].astype(np.float32)
        reference = tuple(data[k] for k in ("num", "boxes", "scores", "classes"))
        spec, (score, iou) = json.loads(str(data["spec"])), data["thresholds"].tolist()
    decoder = Decoder(spec, from_candidates=from_candidates)
    step = max(1, int(getattr(engine, "max_batch", len(images))))
    runs = [[np.array(o) for o in engine([images[i:i + step]])]  # copies: an engine's outputs may be its buffers
            for i in range(0, len(images), step)]
    outputs = {name: np.concatenate([r[k] for r in runs]) for k, name in enumerate(engine.output_names)}
    meta = decoder.network_meta(len(images))
    report = match_detections(reference, decoder(outputs, meta, score, iou, reference[1].shape[1]), score,
                              names=("the FP32 ONNX's", f"engine {engine.name}'s"))
    summary = (f"{report.images} photos, {report.matched} detections matched, worst IoU {report.worst_iou:.3f}, "
               f"worst score change {report.worst_score_delta:.3f}")
    if not report.ok:
        raise GateFailed(f"engine {engine.name} fails the accuracy gate against the FP32 ONNX on the build's photos "
                         f"({'; '.join(report.problems[:3])}; {summary})")
    log(f"engine {engine.name} passes the accuracy gate against the FP32 ONNX: {summary}")
    return report
