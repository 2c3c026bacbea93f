"""Layout sanity gate: decode the exported model's outputs on the parity photos with the layout the build
is about to serve, and refuse layouts whose detections are implausible, naming the likely fix.

Entry point: `check_layout(spec, outputs, score_threshold, declared=, accept=)`, on the exported model's
ONNX Runtime outputs for the parity photos (the parity gate computed them). The parity gate proves that
ONNX computes what Keras computes; this gate is about what the numbers mean. A wrong layout flag otherwise
serves garbage that looks like detections (hhk7734's partly activated heads decoded as raw: every box
scoring about 0.5, nothing the reference finds).

Who it may refuse:
- a darknet import (`declared`): never. The cfg declares every activation, scale_x_y and new_coords and
  the importer parses them exactly, so the gate could only be wrong; what it finds is logged as a warning
  (random or untrained weights trip it: "are these the trained weights?").
- a Keras model: on the evidence below, unless `accept` (--accept-layout, or the layout file's
  "accept_layout": true), which logs the same findings as warnings. The "most candidates pass" count is
  not applied to a model that filters its own candidates (its box count depends on the image, or is
  below one box per cell of the coarsest grid its input size implies): every box it returns passed its
  own threshold already.
"""
from __future__ import annotations

import json

import numpy as np

from ..runtime.detections import Decoder
from .spec import ACTIVATED_GROUPS, DetectorSpec, SpecError

MOST = 0.5  # "most candidates" / "most boxes"
TREND = 0.95  # correlation of x with the column index (y with the row) that says the cell offset is already added
INSIDE = 0.75  # ... with each cell's mean x, y at most this far (in cells) from its centre once scaled by the grid


def grid_trend(head: np.ndarray, anchors: int) -> tuple[float, float, float] | None:
    """A head-shaped output [N, gh, gw, A*K] or [N, gh, gw, A, K] on the parity photos: (correlation of channel 0
    with the column index, of channel 1 with the row index, worst distance in cells of their per-cell means from
    the cell's centre once multiplied by the grid). None for grids under 4 cells a side (too few to tell).

    Raw xy (logits, or a sigmoid: an offset inside the cell) shows no trend across the grid. Decoded xy
    ((sigmoid + cell) / grid, as hhk7734's yolov4 2.x writes it) rises with the column and the row, each value
    inside its own cell."""
    t = np.asarray(head, np.float64).reshape(*head.shape[:3], anchors, -1)
    gh, gw = t.shape[1:3]
    if gh < 4 or gw < 4 or t.shape[-1] < 2:
        return None
    x, y = t[..., 0].mean(axis=(0, 3)), t[..., 1].mean(axis=(0, 3))
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    corr = lambda a, b: float(np.nan_to_num(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
    off = max(float(np.abs(x * gw - (cols + 0.5)).max()), float(np.abs(y * gh - (rows + 0.5)).max()))
    return corr(x, cols), corr(y, rows), off


def decoded_heads_evidence(heads: list[np.ndarray], anchors: list[int]) -> str | None:
    """What shows that head-shaped outputs hold decoded values (centres and sizes normalised to the input, the
    cell offset added), or None where any head does not show it."""
    seen = []
    for head, a in zip(heads, anchors):
        trend = grid_trend(head, a)
        t = np.asarray(head).reshape(*head.shape[:3], a, -1)
        if trend is None or min(trend[:2]) < TREND or trend[2] > INSIDE or not float(t[..., 2:4].min()) > 0:
            return None
        seen.append(trend)
    cx, cy, off = min(s[0] for s in seen), min(s[1] for s in seen), max(s[2] for s in seen)
    return (f"x rises with the column index and y with the row index (correlation {cx:.3f}, {cy:.3f}), each within "
            f"{off:.2f} cell of its cell's centre once multiplied by the grid, and w, h are positive: the cell offset "
            "is already added and the values are normalised to the input (decoded heads)")


def _sigmoid_like(values: np.ndarray, margin: float = 1e-6) -> bool:
    """All values within [0, 1] (+ margin): what a sigmoid produces, and raw logits of a trained head never do.
    xy gets a margin of 0.15: sigmoid * scale_x_y - (scale_x_y - 1)/2 reaches -0.1..1.1 for scale_x_y 1.2."""
    return values.size > 0 and float(values.min()) >= -margin and float(values.max()) <= 1 + margin


def _raw_problems(spec: DetectorSpec, outputs: dict, declared: bool = False) -> list[str]:
    problems = []
    groups = {"xy": slice(0, 2), "obj": slice(4, 5), "cls": slice(5, None)}
    if not declared:
        decoded = decoded_heads_evidence([outputs[h.name] for h in spec.heads], [len(h.anchors) for h in spec.heads])
        if decoded:  # no reading of raw heads fits: say so, and name the one the values support
            return [f"the heads are read as raw, but {decoded}: build with --layout decoded-heads (layout file: "
                    "\"layout\": \"decoded-heads\"), or leave out the raw-head flags and it is inferred"]
    for head in spec.heads:
        t = outputs[head.name].reshape(*outputs[head.name].shape[:3], len(head.anchors), 5 + spec.num_classes)
        done = {"xy", "obj", "cls"} if head.new_coords else set(head.activated)
        margin = {"xy": 0.15}
        looks_activated = [g for g, sl in groups.items() if _sigmoid_like(t[..., sl], margin.get(g, 1e-6))]
        undeclared = [g for g in looks_activated if g not in done]
        if undeclared and declared:
            problems.append(f"{head.name}: raw channels {','.join(undeclared)} all lie in [0, 1] on the parity photos, "
                            "which trained weights rarely give; are these the trained weights?")
        elif undeclared:
            flags = "--activated " + ",".join(g for g in ACTIVATED_GROUPS if g in set(looks_activated) | done)
            if "xy" in looks_activated and not head.scale_x_y_applied:
                # the range cannot tell sigmoid from sigmoid * s - (s - 1)/2 for s near 1: say both
                flags += (" (and --scale-x-y-applied if the model also applied scale_x_y to xy, as "
                          "hhk7734/tensorflow-yolov4 does)")
            problems.append(f"{head.name}: channels {','.join(undeclared)} all lie in [0, 1], as after a sigmoid, but "
                            f"the layout decodes them as raw logits (a second sigmoid would put every score near 0.5): "
                            f"pass {flags}")
        wrong = [g for g in done if g in groups and not _sigmoid_like(t[..., groups[g]], margin.get(g, 1e-6))]
        if wrong:
            problems.append(f"{head.name}: channels {','.join(wrong)} are declared activated but range over "
                            f"[{float(t[..., groups[wrong[0]]].min()):.3g}, {float(t[..., groups[wrong[0]]].max()):.3g}]:"
                            " they look like raw logits; drop them from --activated")
    return problems


def _decoded_problems(spec: DetectorSpec, outputs: dict) -> list[str]:
    problems = []
    d = spec.decoded
    score_tensors = [outputs[k] for k in ("decoded_scores", "nms_scores") if k in outputs]
    if "detections" in outputs:
        _, obj, first = d.columns()
        det = outputs["detections"]
        score_tensors = [det[..., first:]] + ([det[..., obj]] if obj >= 0 else [])
    for s in score_tensors:
        if s.size and (float(s.min()) < -1e-3 or float(s.max()) > 1 + 1e-3):
            problems.append(f"scores range over [{float(s.min()):.3g}, {float(s.max()):.3g}], not [0, 1]: "
                            "are the class columns right (--class-column, --objectness-column, --box-column)?")
            break
    return problems


ACCEPT_HINT = ("if you have checked that the layout is right (for example one photo with `python -m client detect "
               "--out`), pass --accept-layout (layout file: \"accept_layout\": true) to build anyway")


def filters_own_candidates(spec: DetectorSpec, outputs: dict) -> bool:
    """Decoded outputs that the model already filtered: their count depends on the image, or is below one box
    per cell of a stride-32 grid over the input (every YOLO head has at least that many boxes)."""
    if spec.heads or spec.decoded.nms_applied:
        return False
    if spec.per_image:
        return True
    boxes = outputs.get("decoded_boxes", outputs.get("detections"))
    return boxes is not None and boxes.shape[1] < (spec.input_width // 32) * (spec.input_height // 32)


NMS_BOX_ORDER = ("warning: the boxes come from the model's own NMS, whose outputs cannot tell xyxy from yxyx "
                 "(both give plausible boxes): check one photo with `python -m client detect PHOTO --out annotated/` "
                 "and look at the drawn boxes; if they are transposed, rebuild with the other --box-format")


BOX_ORDER = ("warning: box order {} as given, not verified: these values cannot tell xyxy from yxyx (both give "
             "plausible boxes); the package that made the model decides it (docs/inputs.md lists the known ones), or "
             "check one photo with `python -m client detect PHOTO --out annotated/` and look at the drawn boxes")


def check_layout(spec: DetectorSpec, outputs: dict[str, np.ndarray], score_threshold: float,
                 declared: bool = False, accept: bool = False, recognised: bool = False) -> list[str]:
    """Lines describing what was checked (warnings first); raises SpecError naming the likely fix when the
    layout of a Keras model looks misread and neither `declared` nor `accept` holds."""
    problems = _raw_problems(spec, outputs, declared) if spec.heads else _decoded_problems(spec, outputs)
    decoder = Decoder(json.loads(spec.to_json()))
    _, boxes, scores, _ = decoder.candidates(outputs, score_threshold)
    n_img = len(next(iter(outputs.values())))
    # how many (box, class) pairs could pass at all: the denominator of "most candidates"
    if spec.heads:
        pairs = sum(h.grid[0] * h.grid[1] * len(h.anchors) for h in spec.heads) * spec.num_classes
    elif spec.decoded.nms_applied:
        pairs = outputs["nms_scores"].shape[1]
    else:
        any_scores = outputs.get("decoded_scores", outputs.get("detections"))
        pairs = any_scores.shape[1] * spec.num_classes
    per_image = len(scores) / max(n_img, 1)
    filtered = filters_own_candidates(spec, outputs)
    if (not spec.decoded or not spec.decoded.nms_applied) and not filtered:
        if per_image > MOST * pairs:
            problems.append(f"{per_image:.0f} of {pairs} (box, class) candidates per photo score above "
                            f"{score_threshold}: a real detector's are a handful; " + (
                                "are these the trained weights?" if declared else
                                "the layout flags likely misread the outputs (activations, columns or box format)"))
    if len(boxes):
        w, h = spec.input_width, spec.input_height
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        outside = (cx < -0.5 * w) | (cx > 1.5 * w) | (cy < -0.5 * h) | (cy > 1.5 * h) | (bw <= 0) | (bh <= 0) | \
                  (bw > 4 * w) | (bh > 4 * h)
        if outside.mean() > MOST:
            hint = ("are these the trained weights?" if declared else
                    "boxes look normalized to [0, 1]: pass --normalized-boxes" if spec.decoded and
                    not spec.decoded.normalized and float(np.abs(boxes).max()) <= 1.5 else
                    "check --box-format, --normalized-boxes, --anchors and --activated wh")
            problems.append(f"{outside.mean():.0%} of the boxes scoring above {score_threshold} are empty, inverted or "
                            f"far outside the {w}x{h} input: {hint}")
        tiny = (bw < 2) & (bh < 2)
        if spec.decoded and spec.decoded.normalized is False and tiny.mean() > MOST:
            problems.append(f"{tiny.mean():.0%} of the boxes scoring above {score_threshold} are under 2 pixels: "
                            "they look normalized to [0, 1]: pass --normalized-boxes")
    width = float(np.median(boxes[:, 2] - boxes[:, 0])) if len(boxes) else 0.0
    measured = (f"  {per_image:.1f} candidates per photo above {score_threshold}, {width:.0f} px median box width"
                + (" (the model filters its own candidates)" if filtered else ""))
    order = []
    if spec.decoded is not None and not recognised and spec.decoded.box_format in ("xyxy", "yxyx"):
        order = [NMS_BOX_ORDER if spec.decoded.nms_applied else BOX_ORDER.format(spec.decoded.box_format)]
    if order and not problems:
        return ["  " + order[0], measured + ": plausible"]
    if problems and declared:
        why = "the cfg declares the layout, so this does not stop the build"
        return [f"  warning: {p} ({why})" for p in problems] + [measured]
    if problems and accept:
        return [f"  warning (--accept-layout): {p}" for p in problems] + [measured]
    if problems:
        raise SpecError("the output layout looks wrong for this model (decoded on the parity photos):\n  "
                        + "\n  ".join(problems + order) + "\n  " + ACCEPT_HINT)
    return [measured + ": plausible"]
