"""What a detector's tensors mean: the data every later stage reads.

The importers produce a `DetectorSpec`; the exporter names ONNX tensors from it; the
repository renderer writes it beside the model that decodes with it (postprocess, or the detector with NMS).
It is plain data (dataclasses <-> JSON) so the Triton side never imports TensorFlow.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

INPUT_NAME = "images"

# Anchor presets a user can name instead of listing numbers (darknet's COCO anchors).
ANCHOR_PRESETS: dict[str, dict] = {
    "yolov4": {
        "anchors": [(12, 16), (19, 36), (40, 28), (36, 75), (76, 55), (72, 146),
                    (142, 110), (192, 243), (459, 401)],
        "masks": [(0, 1, 2), (3, 4, 5), (6, 7, 8)],  # strides 8, 16, 32
        "scale_x_y": [1.2, 1.1, 1.05],
    },
    "yolov4-tiny": {
        "anchors": [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)],
        "masks": [(1, 2, 3), (3, 4, 5)],  # strides 16, 32 (darknet's tiny mask 1,2,3 is intended)
        "scale_x_y": [1.05, 1.05],
    },
}


ACTIVATED_GROUPS = ("xy", "wh", "obj", "cls")
# Detector output names, prefixed so they never collide with the ensemble's own boxes/scores/classes outputs.
TWO_OUTPUTS = ("decoded_boxes", "decoded_scores")
NMS_OUTPUTS = ("nms_boxes", "nms_scores", "nms_classes", "nms_count")


class SpecError(ValueError):
    """The model's output layout is missing a piece or contradicts itself."""


@dataclass(frozen=True)
class YoloHead:
    """One raw YOLO output, NHWC `[N, grid_h, grid_w, A*(5+C)]`, decoded as darknet's [yolo] layer."""

    name: str
    anchors: tuple[tuple[float, float], ...]  # (w, h) in network-input pixels
    stride: int
    grid: tuple[int, int]  # (h, w)
    scale_x_y: float = 1.0
    new_coords: bool = False  # scaled-YOLOv4: activations already logistic, wh = (2*t)^2
    # Channel groups the model already decoded (e.g. hhk7734/tensorflow-yolov4): xy, obj, cls went
    # through a sigmoid; wh through exp. scale_x_y_applied: xy is already sigmoid*s - (s-1)/2.
    activated: tuple[str, ...] = ()
    scale_x_y_applied: bool = False

    def __post_init__(self):
        bad = set(self.activated) - set(ACTIVATED_GROUPS)
        if bad:
            raise SpecError(f"activated channel groups {sorted(bad)}: expected some of {', '.join(ACTIVATED_GROUPS)}")


@dataclass(frozen=True)
class DecodedLayout:
    """Already-decoded outputs: boxes plus per-class scores, or the result of the model's own NMS.

    - one tensor `detections` `[N, boxes, columns]`: the box at `box_column` (4 columns), an optional
      objectness column, the C class scores from `class_column` to the end (other columns are ignored);
    - two tensors `boxes` `[N, boxes, 4]` and `scores` `[N, boxes, C]` (objectness first if has_objectness);
    - four tensors from a model that ends in NMS (e.g. tf.image.combined_non_max_suppression): `boxes`
      `[N, K, 4]`, `scores` `[N, K]`, `classes` `[N, K]`, `count` `[N, 1]`; served without a second NMS.
    """

    box_format: str = "xyxy"  # xyxy | yxyx | cxcywh
    normalized: bool = False  # boxes in [0,1] of the network input, else its pixels
    has_objectness: bool = False  # an objectness column multiplies the class scores
    outputs: tuple[str, ...] = ("detections",)
    box_column: int = 0  # `detections` only: where the 4 box columns start
    objectness_column: int = -1  # `detections` only: -1 = none (4 when has_objectness)
    class_column: int = -1  # `detections` only: first class score; -1 = right after box (and objectness)

    def __post_init__(self):
        if self.box_format not in ("xyxy", "yxyx", "cxcywh"):
            raise SpecError(f"box format {self.box_format!r}: expected xyxy, yxyx or cxcywh")
        if self.outputs not in (("detections",), TWO_OUTPUTS, NMS_OUTPUTS):
            raise SpecError(f"decoded outputs {self.outputs}: expected {('detections',)}, {TWO_OUTPUTS} or {NMS_OUTPUTS}")

    @property
    def nms_applied(self) -> bool:
        return self.outputs == NMS_OUTPUTS

    def columns(self) -> tuple[int, int, int]:
        """(box, objectness or -1, first class) column of a `detections` tensor."""
        obj = self.objectness_column if self.objectness_column >= 0 else (4 if self.has_objectness else -1)
        first_class = self.class_column if self.class_column >= 0 else max(self.box_column + 4, obj + 1)
        return self.box_column, obj, first_class


@dataclass(frozen=True)
class DetectorSpec:
    input_height: int
    input_width: int
    num_classes: int
    heads: tuple[YoloHead, ...] = ()
    decoded: DecodedLayout | None = None
    class_names: tuple[str, ...] = field(default=())
    # The outputs' shape depends on the image (a graph that filters its own candidates): the detector runs each
    # image alone and pads its outputs with zero rows to the batch's longest (found by the export, export.py)
    per_image: bool = False

    def __post_init__(self):
        if bool(self.heads) == (self.decoded is not None):
            raise SpecError("a detector has either raw YOLO heads or a decoded layout, not both/neither")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise SpecError(f"names file has {len(self.class_names)} names, the model has {self.num_classes} classes")

    @property
    def layout(self) -> str:
        return "raw" if self.heads else "decoded"

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.heads) if self.heads else self.decoded.outputs

    def output_dims(self) -> dict[str, list[int]]:
        """Per-image dims of each output (no batch); -1 where the box count is free."""
        if self.heads:
            return {h.name: [h.grid[0], h.grid[1], len(h.anchors) * (5 + self.num_classes)] for h in self.heads}
        extra = 1 if self.decoded.has_objectness else 0
        if self.decoded.outputs == ("detections",):
            return {"detections": [-1, self.decoded.columns()[2] + self.num_classes]}
        if self.decoded.nms_applied:
            return dict(zip(NMS_OUTPUTS, ([-1, 4], [-1], [-1], [1])))
        return dict(zip(TWO_OUTPUTS, ([-1, 4], [-1, self.num_classes + extra])))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.class_names or tuple(f"class_{i}" for i in range(self.num_classes))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorSpec":
        heads = tuple(
            YoloHead(name=h["name"], anchors=tuple(tuple(a) for a in h["anchors"]), stride=int(h["stride"]),
                     grid=tuple(h["grid"]), scale_x_y=float(h.get("scale_x_y", 1.0)),
                     new_coords=bool(h.get("new_coords", False)), activated=tuple(h.get("activated") or ()),
                     scale_x_y_applied=bool(h.get("scale_x_y_applied", False)))
            for h in d.get("heads") or ())
        dec = d.get("decoded")
        decoded = DecodedLayout(box_format=dec.get("box_format", "xyxy"), normalized=bool(dec.get("normalized", False)),
                                has_objectness=bool(dec.get("has_objectness", False)),
                                outputs=tuple(dec.get("outputs", ("detections",))) if tuple(dec.get("outputs", ())) != ("boxes", "scores") else TWO_OUTPUTS,
                                box_column=int(dec.get("box_column", 0)),
                                objectness_column=int(dec.get("objectness_column", -1)),
                                class_column=int(dec.get("class_column", -1))) if dec else None
        return cls(input_height=int(d["input_height"]), input_width=int(d["input_width"]),
                   num_classes=int(d["num_classes"]), heads=heads, decoded=decoded,
                   class_names=tuple(d.get("class_names") or ()), per_image=bool(d.get("per_image", False)))

    @classmethod
    def from_json(cls, text: str) -> "DetectorSpec":
        return cls.from_dict(json.loads(text))


def read_names(path: str | Path) -> tuple[str, ...]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"names file not found: {p}")
    return tuple(line.strip() for line in p.read_text().splitlines() if line.strip())
