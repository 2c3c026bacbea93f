"""Import stage: every supported source becomes an `ImportedDetector` (a TF-callable model + its `DetectorSpec`).

Entry point: `import_model(ImportOptions)`. Darknet cfg/weights go through `darknet.py`; Keras 3
`.keras`, Keras 2 `.h5` (through tf_keras, so TFOpLambda layers load) and SavedModel directories
are handled here, with the output layout inferred where possible and asked for otherwise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .spec import ANCHOR_PRESETS, DecodedLayout, DetectorSpec, SpecError, YoloHead, read_names


class ModelLoadError(ValueError):
    """The model file cannot be loaded."""


@dataclass
class ImportedDetector:
    """A model that maps float32 NHWC RGB images in [0,1] to the outputs its spec names."""

    model: object  # keras.Model, tf_keras.Model or a SavedModel signature wrapper
    spec: DetectorSpec
    source: str
    call: Callable | None = None  # images tensor -> list of outputs in spec order; default: model(x)
    trackable: object = None  # what a SavedModel must keep alive (variables)

    def __call__(self, images):
        if self.call is not None:
            return self.call(images)
        out = self.model(images, training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def predict(self, images: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
        """Run in TensorFlow (the reference for the export parity gate)."""
        chunks: list[list[np.ndarray]] = []
        for i in range(0, len(images), batch_size):
            chunks.append([np.asarray(o) for o in self(images[i:i + batch_size])])
        return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(self.spec.output_names)}


@dataclass
class ImportOptions:
    """What build_repo.py's input flags say (all optional; the darknet default is the pretrained yolov4-tiny)."""

    cfg: Path | None = None
    weights: Path | None = None
    keras: Path | None = None
    names: Path | None = None
    layout_file: Path | None = None  # JSON with any of the keys below
    layout: dict = field(default_factory=dict)  # raw|decoded, anchors, masks, scale_x_y, new_coords, box_format, ...


def import_model(opts: ImportOptions) -> ImportedDetector:
    if opts.keras is not None:
        if opts.cfg or opts.weights:
            raise SpecError("give either --keras or --cfg/--weights, not both")
        layout = dict(json.loads(Path(opts.layout_file).read_text())) if opts.layout_file else {}
        layout.update({k: v for k, v in opts.layout.items() if v is not None})
        return import_keras(Path(opts.keras), read_names(opts.names) if opts.names else (), layout)
    if not (opts.cfg and opts.weights):
        raise SpecError("darknet import needs both --cfg and --weights")
    from .darknet import import_darknet

    return import_darknet(opts.cfg, opts.weights, opts.names)


# --------------------------------------------------------------------------- Keras / SavedModel


def _load(path: Path):
    """Return (kind, object) for a .keras, .h5 or SavedModel directory."""
    if not path.exists():
        raise FileNotFoundError(f"Keras model not found: {path}")
    try:
        if path.is_dir():
            if not (path / "saved_model.pb").is_file():
                raise ModelLoadError(f"{path} is a directory without saved_model.pb: not a SavedModel")
            import tensorflow as tf

            obj = tf.saved_model.load(str(path))
            if "serving_default" not in obj.signatures:
                raise ModelLoadError(f"{path}: SavedModel has no 'serving_default' signature "
                                     f"(has {list(obj.signatures)})")
            return "savedmodel", obj
        if path.suffix == ".keras":
            import keras

            return "keras3", keras.saving.load_model(str(path), compile=False)
        if path.suffix in (".h5", ".hdf5"):
            # Files saved by tf.keras <= 2.15 hold TFOpLambda/SlicingOpLambda layers: only legacy Keras loads them.
            import tf_keras

            return "keras2", tf_keras.models.load_model(str(path), compile=False)
    except (ModelLoadError, FileNotFoundError):
        raise
    except Exception as e:  # loaders raise anything from OSError to TypeError on a bad file
        raise ModelLoadError(f"cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    raise ModelLoadError(f"{path}: unknown model format (expected .keras, .h5 or a SavedModel directory)")


def import_keras(path: Path, class_names: tuple[str, ...], layout: dict) -> ImportedDetector:
    kind, obj = _load(path)
    if kind == "savedmodel":
        sig = obj.signatures["serving_default"]
        args, kwargs = sig.structured_input_signature
        inputs = list(kwargs.values()) + list(args)
        if len(inputs) != 1:
            raise SpecError(f"{path}: the serving signature has {len(inputs)} inputs; a detector takes one image tensor")
        in_name = next(iter(kwargs)) if kwargs else None
        in_shape = tuple(inputs[0].shape)
        out_keys = sorted(sig.structured_outputs)  # signature outputs are a dict; sort for a stable order
        out_shapes = [tuple(sig.structured_outputs[k].shape) for k in out_keys]

        def raw_call(x, _sig=sig, _in=in_name, _keys=out_keys):
            res = _sig(**{_in: x}) if _in else _sig(x)
            return [res[k] for k in _keys]
        model = obj
    else:
        in_shape = tuple(obj.inputs[0].shape) if len(obj.inputs) == 1 else None
        if in_shape is None:
            raise SpecError(f"{path}: the model has {len(obj.inputs)} inputs; a detector takes one image tensor")
        out_shapes = [tuple(t.shape) for t in obj.outputs]

        def raw_call(x, _m=obj):
            out = _m(x, training=False)
            return list(out) if isinstance(out, (list, tuple)) else [out]
        model = obj

    spec, order = infer_spec(path.name, in_shape, out_shapes, class_names, layout)
    return ImportedDetector(model=model, spec=spec, source=f"{kind} {path.name}",
                            call=lambda x: [raw_call(x)[i] for i in order], trackable=obj)


def _pairs(v) -> list[tuple[float, float]]:
    flat = [float(a) for a in (v.replace(";", ",").split(",") if isinstance(v, str) else np.ravel(v))]
    if len(flat) % 2:
        raise SpecError(f"anchors must be w,h pairs, got {len(flat)} numbers")
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def infer_spec(label: str, in_shape, out_shapes, class_names, layout: dict) -> tuple[DetectorSpec, list[int]]:
    """Describe the outputs; returns the spec and the order that maps model outputs to spec outputs."""
    if len(in_shape) != 4 or in_shape[-1] != 3:
        raise SpecError(f"{label}: input shape {in_shape} is not NHWC with 3 channels")
    h, w = in_shape[1], in_shape[2]
    if layout.get("input_size"):
        h = w = None
        size = layout["input_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h is None or w is None:
        raise SpecError(f"{label}: input height/width are not fixed in the model: pass --input-size")
    ranks = {len(s) for s in out_shapes}
    kind = layout.get("layout") or ("raw" if ranks == {4} else "decoded" if ranks == {3} else None)
    if kind is None:
        raise SpecError(f"{label}: cannot tell the output layout from shapes {out_shapes}: pass --layout raw|decoded")
    if kind == "raw":
        return _raw_spec(label, h, w, out_shapes, class_names, layout)
    return _decoded_spec(label, h, w, out_shapes, class_names, layout)


def _raw_spec(label, h, w, out_shapes, class_names, layout):
    if any(len(s) != 4 for s in out_shapes):
        raise SpecError(f"{label}: raw YOLO heads are [N,S,S,A*(5+C)], got {out_shapes}")
    # Heads are ordered by stride, finest grid first; anchors/masks are given in that order.
    order = sorted(range(len(out_shapes)), key=lambda i: -(out_shapes[i][1] or 0))
    preset = ANCHOR_PRESETS.get(layout.get("anchors")) if isinstance(layout.get("anchors"), str) else None
    if layout.get("anchors") is None:
        raise SpecError(f"{label}: raw YOLO heads need anchors, which a model does not record: pass --anchors "
                        f"(a preset: {', '.join(ANCHOR_PRESETS)}; or w,h,w,h,... in input pixels)")
    anchors = preset["anchors"] if preset else _pairs(layout["anchors"])
    masks = layout.get("masks") or (preset["masks"] if preset else None)
    if isinstance(masks, str):
        masks = [[int(v) for v in m.split(",")] for m in masks.split(";")]
    if masks is None:
        if len(anchors) % len(out_shapes):
            raise SpecError(f"{label}: {len(anchors)} anchors do not split evenly over {len(out_shapes)} heads: pass --masks")
        per = len(anchors) // len(out_shapes)
        masks = [list(range(i * per, (i + 1) * per)) for i in range(len(out_shapes))]
    if len(masks) != len(out_shapes):
        raise SpecError(f"{label}: {len(masks)} masks for {len(out_shapes)} heads")
    sxy = layout.get("scale_x_y", preset["scale_x_y"] if preset else 1.0)
    sxy = [float(v) for v in (sxy.split(",") if isinstance(sxy, str) else np.ravel(sxy))]
    if len(sxy) == 1:
        sxy = sxy * len(out_shapes)
    if len(sxy) != len(out_shapes):
        raise SpecError(f"{label}: {len(sxy)} scale_x_y values for {len(out_shapes)} heads")
    heads, num_classes = [], None
    for k, i in enumerate(order):
        _, gh, gw, ch = out_shapes[i]
        if gh is None or gw is None or ch is None:
            raise SpecError(f"{label}: head {i} has unknown shape {out_shapes[i]}: pass --input-size")
        a = len(masks[k])
        if ch % a or ch // a < 6:
            raise SpecError(f"{label}: head with {ch} channels does not hold {a} anchors x (5 + classes)")
        c = ch // a - 5
        if num_classes not in (None, c):
            raise SpecError(f"{label}: heads disagree on the class count ({num_classes} vs {c})")
        num_classes = c
        heads.append(YoloHead(name=f"head_{k}", anchors=tuple(anchors[m] for m in masks[k]), stride=w // gw,
                              grid=(gh, gw), scale_x_y=sxy[k], new_coords=bool(layout.get("new_coords", False))))
    return DetectorSpec(input_height=h, input_width=w, num_classes=num_classes, heads=tuple(heads),
                        class_names=tuple(class_names)), order


def _decoded_spec(label, h, w, out_shapes, class_names, layout):
    if "box_format" not in layout or layout["box_format"] is None:
        raise SpecError(f"{label}: decoded outputs need the box format, which a model does not record: "
                        "pass --box-format xyxy|yxyx|cxcywh (and --normalized-boxes if they are in [0,1])")
    objectness = bool(layout.get("has_objectness", False))
    extra = 1 if objectness else 0
    if len(out_shapes) == 1:
        last = out_shapes[0][-1]
        if len(out_shapes[0]) != 3 or last is None or last < 5 + extra:
            raise SpecError(f"{label}: a single decoded output is [N, boxes, 4+C], got {out_shapes[0]}")
        num_classes, outputs, order = last - 4 - extra, ("detections",), [0]
    elif len(out_shapes) == 2:
        box_i = [i for i, s in enumerate(out_shapes) if s[-1] == 4]
        if len(box_i) != 1:
            raise SpecError(f"{label}: with two decoded outputs one must be boxes [N, boxes, 4]; got {out_shapes}")
        order = [box_i[0], 1 - box_i[0]]
        num_classes, outputs = out_shapes[order[1]][-1] - extra, ("boxes", "scores")
    else:
        raise SpecError(f"{label}: decoded layout has 1 or 2 outputs, the model has {len(out_shapes)}")
    dec = DecodedLayout(box_format=layout["box_format"], normalized=bool(layout.get("normalized", False)),
                        has_objectness=objectness, outputs=outputs)
    return DetectorSpec(input_height=h, input_width=w, num_classes=num_classes, decoded=dec,
                        class_names=tuple(class_names)), order
