"""Import stage: every supported source becomes an `ImportedDetector` (a TF-callable model + its `DetectorSpec`).

Entry point: `import_model(ImportOptions)`. Darknet cfg/weights go through `darknet.py`; Keras 3
`.keras`, Keras 2 `.h5` (through tf_keras, so TFOpLambda layers load) and SavedModel directories
are handled here, with the output layout inferred where possible and asked for otherwise.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .detector import ImportedDetector
from .layout_gate import decoded_heads_evidence
from .spec import ANCHOR_PRESETS, NMS_OUTPUTS, TWO_OUTPUTS, DecodedLayout, DetectorSpec, SpecError, YoloHead, read_names


class ModelLoadError(ValueError):
    """The model file cannot be loaded."""


@dataclass
class ImportOptions:
    """What build_repo.py's input flags say (all optional; the darknet default is the pretrained yolov4-tiny)."""

    cfg: Path | None = None
    weights: Path | None = None
    keras: Path | None = None
    names: Path | None = None
    layout_file: Path | None = None  # JSON with any of the keys below
    layout: dict = field(default_factory=dict)  # raw|decoded|nms, anchors, masks, scale_x_y, new_coords, box_format, ...
    custom_objects: str | None = None  # module (name or .py path) whose import registers the model's custom classes
    accept_layout: bool = False  # --accept-layout (or the layout file's "accept_layout": true)
    probe_images: tuple[Path, ...] = ()  # photos that tell outputs apart by value where names do not (the parity photos)


def import_model(opts: ImportOptions) -> ImportedDetector:
    if opts.keras is not None:
        if opts.cfg or opts.weights:
            raise SpecError("give either --keras or --cfg/--weights, not both")
        layout = read_layout_file(opts.layout_file) if opts.layout_file else {}
        layout.update({k: v for k, v in opts.layout.items() if v is not None})
        accept = bool(layout.pop("accept_layout", False)) or opts.accept_layout
        det = import_keras(Path(opts.keras), read_names(opts.names) if opts.names else (), layout,
                           load_custom_objects(opts.custom_objects), opts.probe_images)
        det.accept_layout = accept
        return det
    if not (opts.cfg and opts.weights):
        raise SpecError("darknet import needs both --cfg and --weights")
    from .darknet import import_darknet

    det = import_darknet(opts.cfg, opts.weights, opts.names)
    det.declared_layout = True  # the cfg declares every activation, scale_x_y and new_coords, parsed exactly
    return det


# --------------------------------------------------------------------------- Keras / SavedModel

LAYOUTS = ("raw", "decoded-heads", "decoded", "nms")
RAW_ONLY = ("activated", "scale_x_y_applied", "new_coords")  # flags that only a raw-head reading has
LAYOUT_KEYS = ("layout", "anchors", "masks", "scale_x_y", "new_coords", "activated", "scale_x_y_applied",
               "box_format", "normalized_boxes", "has_objectness", "box_column", "objectness_column",
               "class_column", "num_classes", "input_size", "accept_layout")


def read_layout_file(path: Path) -> dict:
    """--layout-file JSON: the same keys as the flags (normalized_boxes for --normalized-boxes, ...)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a layout file is a JSON object")
    if "normalized" in data:  # the name this key had before it matched --normalized-boxes
        data.setdefault("normalized_boxes", data.pop("normalized"))
    unknown = sorted(set(data) - set(LAYOUT_KEYS))
    if unknown:
        raise SpecError(f"{path}: unknown layout keys {unknown}; known: {', '.join(LAYOUT_KEYS)}")
    return data


def load_custom_objects(module: str | None) -> dict:
    """Import the module that defines/registers a model's custom layers and functions; its public names."""
    if not module:
        return {}
    import importlib
    import importlib.util
    import sys

    try:
        if module.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module).stem, module)
            if spec is None or not Path(module).is_file():
                raise ModelLoadError(f"--custom-objects {module}: no such file")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"--custom-objects {module}: import failed: {type(e).__name__}: {e}") from e
    return {k: v for k, v in vars(mod).items() if not k.startswith("_")}


SAVEDMODEL_HINT = ("if it holds custom layers or Lambda functions, pass --custom-objects MODULE (the module that "
                   "defines them), or export a SavedModel where the model's code is at hand "
                   "(tf.saved_model.save(model, DIR) or model.export(DIR)) and pass --keras DIR")


def _load(path: Path, custom_objects: dict | None = None):
    """Return (kind, object) for a .keras, .h5 or SavedModel directory."""
    if not path.exists():
        raise FileNotFoundError(f"Keras model not found: {path}")
    try:
        if path.is_dir():
            if not (path / "saved_model.pb").is_file():
                raise ModelLoadError(f"{path} is a directory without saved_model.pb: not a SavedModel")
            import tensorflow as tf

            # Grappler's remapper fuses BatchNorm + Mish for oneDNN and then fails at run time ("Fusion is
            # not implemented: [FusedBatchNorm,Mish]") for SavedModels from tf.keras 2 YOLOv4s; turn it off.
            tf.config.optimizer.set_experimental_options({"remapping": False})
            obj = tf.saved_model.load(str(path))
            if "serving_default" not in obj.signatures:
                raise ModelLoadError(f"{path}: SavedModel has no 'serving_default' signature "
                                     f"(has {list(obj.signatures)})")
            return "savedmodel", obj
        if path.suffix == ".keras":
            import keras

            # safe_mode stays on (no bytecode from the file); --custom-objects supplies the code instead
            return "keras3", keras.saving.load_model(str(path), compile=False, custom_objects=custom_objects or None)
        if path.suffix in (".h5", ".hdf5"):
            # Files saved by tf.keras <= 2.15 hold TFOpLambda/SlicingOpLambda layers: only legacy Keras loads them.
            import tf_keras

            return "keras2", tf_keras.models.load_model(str(path), compile=False, custom_objects=custom_objects or None)
    except (ModelLoadError, FileNotFoundError):
        raise
    except Exception as e:  # loaders raise anything from OSError to TypeError on a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = f"; {SAVEDMODEL_HINT}" if path.suffix in (".keras", ".h5", ".hdf5") else ""
        raise ModelLoadError(f"cannot load {path}: {type(e).__name__}: {first}{hint}") from e
    raise ModelLoadError(f"{path}: unknown model format (expected .keras, .h5 or a SavedModel directory)")


def import_keras(path: Path, class_names: tuple[str, ...], layout: dict,
                 custom_objects: dict | None = None, probe_images: tuple[Path, ...] = ()) -> ImportedDetector:
    kind, obj = _load(path, custom_objects)
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
        out_names = list(out_keys)

        def raw_call(x, _sig=sig, _in=in_name, _keys=out_keys):
            res = _sig(**{_in: x}) if _in else _sig(x)
            return [res[k] for k in _keys]
        model = obj
    else:
        in_shape = tuple(obj.inputs[0].shape) if len(obj.inputs) == 1 else None
        if in_shape is None:
            raise SpecError(f"{path}: the model has {len(obj.inputs)} inputs; a detector takes one image tensor")
        out_shapes = [tuple(t.shape) for t in obj.outputs]
        out_names = [getattr(t, "name", "") or "" for t in obj.outputs]

        def raw_call(x, _m=obj):
            out = _m(x, training=False)
            return list(out) if isinstance(out, (list, tuple)) else [out]
        model = obj

    recognised, known, names = recognise(in_shape, out_shapes, out_names, class_names, layout)
    layout = {**known, **layout}  # the flags still override what the package's layout says
    probe = _Probe(raw_call, probe_images)
    spec, order = infer_spec(path.name, in_shape, out_shapes, class_names, layout, names, probe if probe_images else None)
    adapt = _adapter(spec, out_shapes, order)
    notes = ([f"recognised {recognised}: " + ", ".join(f"{k} {v}" for k, v in known.items())] if recognised else []) + \
        ([probe.told] if probe.told else [])
    return ImportedDetector(model=model, spec=spec, recognised=recognised,
                            source=f"{kind} {path.name}" + (f" ({'; '.join(notes)})" if notes else ""),
                            call=lambda x: adapt([raw_call(x)[i] for i in order]), trackable=obj)


class _Probe:
    """The model's raw outputs on sample photos (stretched to its input size, [0, 1]), for telling outputs
    apart by their values; `told` says what it decided, for the build log."""

    def __init__(self, raw_call, photos):
        self.raw_call, self.photos, self.told = raw_call, tuple(photos), ""

    def __call__(self, h: int, w: int) -> list[np.ndarray]:
        from ..runtime import images

        return [np.asarray(o) for o in self.raw_call(images.preprocess_files(self.photos, w, h))]


SICARA_NAME = re.compile(r"^YOLOv3_head(_\d+)?(:\d+)?$")
SICARA_ANCHORS = "12,16,19,36,40,28,36,75,76,55,72,146,142,110,192,243,459,401"  # tf2_yolov4.anchors, finest first


def recognise(in_shape, out_shapes, out_names, class_names=(), layout=None) -> tuple[str, dict, list]:
    """A known TF2 package's model, told by its output names and shapes: (what it is, the layout keys that
    package's own inference implies, the output names to read the layout by). Nothing known: ("", {}, names).

    - sicara tf2-yolov4 (its head is a Keras model named YOLOv3_head, so its outputs are YOLOv3_head, _1, ...):
      inference model: combined NMS, in yolo_nms's order boxes, scores, classes, count; its
      yolov3_boxes_regression writes x1, y1, x2, y2 normalized to [0, 1]. Training model: three rank-5 heads,
      YOLOv4's anchors, and no scale_x_y (its own decoder applies none, so neither does the served one).
    - tf-yolov4 (Licht-T): one output [N, 3 * sum((S/s)^2 for s in 8, 16, 32), 9 + C]: cx, cy, w, h in
      [0, 1], the four raw values, objectness, class scores. Its own predict() letterboxes with fill 0.
      Told from a one-output model with 4 + C columns only by the names file (9 + C columns), and not applied
      when the flags place the columns themselves.
    """
    layout = layout or {}
    names = [str(n or "") for n in out_names]
    if names and all(SICARA_NAME.match(n) for n in names):
        suffix = lambda n: int(SICARA_NAME.match(n).group(1)[1:]) if SICARA_NAME.match(n).group(1) else 0
        ranks = [len(s) for s in out_shapes]
        if sorted(ranks) == [1, 2, 2, 3] and len(names) == 4:
            role = ["boxes", "scores", "classes", "count"]
            return ("sicara tf2-yolov4 inference model (combined NMS, outputs YOLOv3_head..._3 = boxes, scores, "
                    "classes, count)", {"layout": "nms", "box_format": "xyxy", "normalized_boxes": True},
                    [role[sorted(names, key=suffix).index(n)] for n in names])
        if ranks == [5] * len(names) and len(names) == 3:
            return ("sicara tf2-yolov4 training model (rank-5 heads)",
                    {"layout": "raw", "anchors": SICARA_ANCHORS, "scale_x_y": 1.0}, names)
    if len(out_shapes) == 1 and len(out_shapes[0]) == 3 and len(in_shape) == 4 and in_shape[1] and in_shape[2]:
        h, w = in_shape[1], in_shape[2]
        boxes = 3 * sum((h // s) * (w // s) for s in (8, 16, 32))
        _, n, cols = out_shapes[0]
        placed = any(layout.get(k) is not None for k in ("box_column", "objectness_column", "class_column",
                                                         "has_objectness", "layout"))
        # the box count may be left open in a SavedModel's signature (the package reshapes with tf.shape)
        if n in (boxes, None) and cols is not None and class_names and cols == 9 + len(class_names) and not placed:
            return ("tf-yolov4 (Licht-T) output [N, boxes, cx cy w h, 4 raw, objectness, classes]; its own "
                    "predict() letterboxes with fill 0: serve with --resize letterbox --letterbox-fill 0 to match it",
                    {"layout": "decoded", "box_format": "cxcywh", "normalized_boxes": True, "objectness_column": 8,
                     "class_column": 9}, names)
    return "", {}, names


def _adapter(spec: DetectorSpec, out_shapes, order):
    """Graph ops that bring the model's outputs to the spec's contract (they become part of the ONNX):
    rank-5 heads [N,S,S,A,5+C] -> [N,S,S,A*(5+C)]; an NMS model's outputs -> float32, count [N, 1]."""
    if spec.heads and any(len(out_shapes[i]) == 5 for i in order):
        def flatten(outs):
            import tensorflow as tf

            return [tf.reshape(o, [-1, h.grid[0], h.grid[1], len(h.anchors) * (5 + spec.num_classes)])
                    for o, h in zip(outs, spec.heads)]
        return flatten
    if spec.decoded is not None and spec.decoded.outputs == ("detections",) and len(order) > 1:
        def join(outs):  # decoded heads -> one detections tensor [N, sum(S*S*A), 5 + C]
            import tensorflow as tf

            k = 5 + spec.num_classes
            return [tf.concat([tf.reshape(o, [tf.shape(o)[0], -1, k]) for o in outs], axis=1)]
        return join
    if spec.decoded is not None and spec.decoded.nms_applied:
        def nms(outs):
            import tensorflow as tf

            boxes, scores, classes, count = (tf.cast(o, tf.float32) for o in outs)
            return [boxes, scores, classes, tf.reshape(count, [-1, 1])]
        return nms
    return lambda outs: outs


def _pairs(v) -> list[tuple[float, float]]:
    flat = [float(a) for a in (v.replace(";", ",").split(",") if isinstance(v, str) else np.ravel(v))]
    if len(flat) % 2:
        raise SpecError(f"anchors must be w,h pairs, got {len(flat)} numbers")
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def infer_spec(label: str, in_shape, out_shapes, class_names, layout: dict,
               out_names=None, probe=None) -> tuple[DetectorSpec, list[int]]:
    """Describe the outputs; returns the spec and the order that maps model outputs to spec outputs.
    `probe(h, w)`, where given, runs the model on sample photos and returns its outputs (numpy, model order):
    an NMS model's scores and classes are told apart by their values when their names do not tell."""
    if len(in_shape) != 4 or in_shape[-1] != 3:
        raise SpecError(f"{label}: input shape {in_shape} is not NHWC with 3 channels")
    h, w = in_shape[1], in_shape[2]
    if layout.get("input_size"):
        h = w = None
        size = layout["input_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h is None or w is None:
        raise SpecError(f"{label}: input height/width are not fixed in the model: pass --input-size")
    ranks = sorted(len(s) for s in out_shapes)
    kind = layout.get("layout") or ("raw" if set(ranks) in ({4}, {5}) else "decoded" if set(ranks) == {3}
                                    else "nms" if ranks == [1, 2, 2, 3] else None)
    if kind is None:
        raise SpecError(f"{label}: cannot tell the output layout from shapes {out_shapes}: pass --layout "
                        f"{'|'.join(LAYOUTS)} (nms: boxes, scores, classes, count from the model's own NMS)")
    if kind not in LAYOUTS:
        raise SpecError(f"{label}: layout {kind!r}: expected one of {', '.join(LAYOUTS)}")
    head_shaped = set(ranks) in ({4}, {5})
    if head_shaped and probe is not None and any(d is None for s in out_shapes for d in s[1:]):
        # an open input size leaves the grids open too: the model run at the given size shows them
        out_shapes = [(None, *o.shape[1:]) for o in probe(h, w)]
    if kind == "raw" and head_shaped and not layout.get("layout") and probe is not None \
            and not any(layout.get(k) for k in RAW_ONLY):
        evidence = decoded_heads_evidence(probe(h, w), [_anchors_per_head(s, class_names, layout, len(out_shapes))
                                                        for s in out_shapes])
        if evidence:
            kind = "decoded-heads"
            probe.told = ("values say: " + evidence + (" (--anchors not needed)" if layout.get("anchors") else ""))
    if kind == "decoded-heads":
        return _decoded_heads_spec(label, h, w, out_shapes, class_names, layout)
    if kind == "raw":
        return _raw_spec(label, h, w, out_shapes, class_names, layout)
    if kind == "nms":
        return _nms_spec(label, h, w, out_shapes, class_names, layout, out_names or [""] * len(out_shapes), probe)
    return _decoded_spec(label, h, w, out_shapes, class_names, layout)


def _anchors_per_head(shape, class_names, layout, heads: int) -> int:
    """Anchors in one head-shaped output: its rank-5 axis; else the masks'; else what the names file's class count
    implies; else YOLO's 3."""
    if len(shape) == 5:
        return int(shape[3])
    if layout.get("masks"):
        masks = layout["masks"]
        return len(masks.split(";")[0].split(",")) if isinstance(masks, str) else len(masks[0])
    ch = shape[-1]
    if class_names and ch and ch % (5 + len(class_names)) == 0:
        return ch // (5 + len(class_names))
    return 3


def _decoded_heads_spec(label, h, w, out_shapes, class_names, layout):
    """Head-shaped outputs whose values are already decoded (hhk7734's yolov4 2.x): per cell and anchor cx, cy, w, h
    normalised to the input, objectness and class scores after their sigmoid. Served as one `detections` tensor
    [N, boxes, 5 + C] (the adapter reshapes and joins the heads): cxcywh, normalised, with objectness."""
    classes = set()
    for s in out_shapes:
        if any(d is None for d in s[1:]):
            raise SpecError(f"{label}: head-shaped output {s} has open dims: pass --input-size, or re-save the model "
                            "with a fixed input size")
        a = _anchors_per_head(s, class_names, layout, len(out_shapes))
        k = s[4] if len(s) == 5 else s[3] // a
        if (len(s) == 4 and s[3] % a) or k < 6:
            raise SpecError(f"{label}: a decoded head of {s[-1]} channels does not hold {a} anchors x (5 + classes)")
        classes.add(k - 5)
    if len(classes) != 1:
        raise SpecError(f"{label}: decoded heads disagree on the class count ({sorted(classes)})")
    num_classes = classes.pop()
    if class_names and len(class_names) != num_classes:
        raise SpecError(f"{label}: names file has {len(class_names)} names, the decoded heads have {num_classes} classes")
    dec = DecodedLayout(box_format="cxcywh", normalized=True, has_objectness=True, outputs=("detections",))
    order = sorted(range(len(out_shapes)), key=lambda i: -(out_shapes[i][1] or 0))
    return DetectorSpec(input_height=h, input_width=w, num_classes=num_classes, decoded=dec,
                        class_names=tuple(class_names)), order


def _raw_spec(label, h, w, out_shapes, class_names, layout):
    if all(len(s) == 5 for s in out_shapes):  # [N,S,S,A,5+C]: the exported graph flattens the anchors
        out_shapes = [(n, sh, sw, None if a is None or c is None else a * c) for n, sh, sw, a, c in out_shapes]
    if any(len(s) != 4 for s in out_shapes):
        raise SpecError(f"{label}: raw YOLO heads are [N,S,S,A*(5+C)] or [N,S,S,A,5+C], got {out_shapes}")
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
                              grid=(gh, gw), scale_x_y=sxy[k], new_coords=bool(layout.get("new_coords", False)),
                              activated=_groups(layout.get("activated")),
                              scale_x_y_applied=bool(layout.get("scale_x_y_applied", False))))
    return DetectorSpec(input_height=h, input_width=w, num_classes=num_classes, heads=tuple(heads),
                        class_names=tuple(class_names)), order


def _groups(value) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip())


def _need_box_format(label, layout):
    if layout.get("box_format") is None:
        raise SpecError(f"{label}: decoded outputs need the box format, which a model does not record and its values "
                        "cannot tell (xyxy and yxyx both give plausible boxes): pass --box-format xyxy|yxyx|cxcywh (and "
                        "--normalized-boxes if they are in [0,1]) as the package that made it writes them "
                        "(docs/inputs.md: hunglc007/tensorflow-yolov4-tflite yxyx normalized, sicara tf2-yolov4 xyxy "
                        "normalized), or check one photo with `python -m client detect PHOTO --out annotated/` after "
                        "building")


def _nms_spec(label, h, w, out_shapes, class_names, layout, names, probe=None):
    """boxes [N,K,4], scores [N,K], classes [N,K], count [N]: told apart by rank, then by name, then by the
    values the model gives on sample photos (`probe`)."""
    _need_box_format(label, layout)
    if sorted(len(s) for s in out_shapes) != [1, 2, 2, 3] or out_shapes[[len(s) for s in out_shapes].index(3)][-1] != 4:
        raise SpecError(f"{label}: an NMS layout is boxes [N,K,4], scores [N,K], classes [N,K], count [N]; "
                        f"got {out_shapes}")
    boxes = [len(s) for s in out_shapes].index(3)
    count = [len(s) for s in out_shapes].index(1)
    pair = [i for i, s in enumerate(out_shapes) if len(s) == 2]
    named = {i: str(names[i]).lower() for i in pair}
    scores = [i for i in pair if "score" in named[i]]
    classes = [i for i in pair if "class" in named[i] or "label" in named[i]]
    if not (layout.get("num_classes") or class_names):
        raise SpecError(f"{label}: a model that ends in NMS does not show its class count: pass --names or --num-classes")
    num_classes = int(layout.get("num_classes") or len(class_names))
    if len(scores) == 1 and len(classes) == 1 and scores != classes:
        order = [boxes, scores[0], classes[0], count]
    elif not any(named.values()) or names == [""] * len(names):
        order = [boxes, pair[0], pair[1], count]  # unnamed: combined_non_max_suppression's order
    else:
        told = scores_and_classes(probe(h, w), pair, count, num_classes) if probe else None
        if told is None:
            raise SpecError(f"{label}: cannot tell scores from classes among outputs {[names[i] for i in pair]}: "
                            "neither their names nor their values on the parity photos tell (scores lie in [0, 1] "
                            "and are not all whole; classes are whole numbers below the class count); name them "
                            "with 'score' and 'class'")
        order = [boxes, told[0], told[1], count]
        probe.told = (f"scores {names[told[0]]!r} and classes {names[told[1]]!r} told apart by their values on the "
                      "parity photos")
    dec = DecodedLayout(box_format=layout["box_format"], normalized=bool(layout.get("normalized_boxes", False)),
                        outputs=NMS_OUTPUTS)
    return DetectorSpec(input_height=h, input_width=w, num_classes=num_classes, decoded=dec,
                        class_names=tuple(class_names)), order


def scores_and_classes(outputs: list, pair: list[int], count: int, num_classes: int) -> tuple[int, int] | None:
    """(scores, classes) among the two [N, K] outputs of an NMS model, told by their dtypes and by their values
    in the rows the count says are detections; None when they do not tell (no detection on the photos, or
    both look alike). Classes: the one integer output, else whole numbers in [0, num_classes) with some
    other than 0; scores: in [0, 1] and not all whole."""
    ints = [i for i in pair if np.issubdtype(np.asarray(outputs[i]).dtype, np.integer)]
    if len(ints) == 1:
        return next(i for i in pair if i != ints[0]), ints[0]
    first = np.asarray(outputs[pair[0]])
    n = np.asarray(outputs[count]).reshape(len(first), -1)[:, 0].astype(np.int64)
    valid = np.arange(first.shape[1])[None, :] < n[:, None]
    if not valid.any():
        return None
    looks = {}
    for i in pair:
        v = np.asarray(outputs[i], np.float64)[valid]
        whole = bool(np.all(v == np.round(v)))
        if whole and v.min() >= 0 and v.max() < num_classes and v.max() > 0:
            looks["classes"] = looks.get("classes", []) + [i]
        elif not whole and v.min() >= 0 and v.max() <= 1:
            looks["scores"] = looks.get("scores", []) + [i]
    if len(looks.get("scores", [])) == 1 and len(looks.get("classes", [])) == 1:
        return looks["scores"][0], looks["classes"][0]
    return None


def _decoded_spec(label, h, w, out_shapes, class_names, layout):
    _need_box_format(label, layout)
    objectness = bool(layout.get("has_objectness", False))
    extra = 1 if objectness else 0
    columns = {k: int(layout[k]) for k in ("box_column", "objectness_column", "class_column")
               if layout.get(k) is not None}
    if len(out_shapes) == 1:
        last = out_shapes[0][-1]
        probe = DecodedLayout(has_objectness=objectness, **columns)
        first_class = probe.columns()[2]
        if len(out_shapes[0]) != 3 or last is None or last <= first_class:
            raise SpecError(f"{label}: a single decoded output is [N, boxes, columns] with the class scores from "
                            f"column {first_class} on, got {out_shapes[0]}")
        num_classes, outputs, order = last - first_class, ("detections",), [0]
        if class_names and len(class_names) < num_classes and layout.get("class_column") is None:
            raise SpecError(f"{label}: names file has {len(class_names)} names, the output has {num_classes} columns "
                            f"from column {first_class} on: if some are not class scores, say where the classes "
                            f"start with --class-column (and --box-column/--objectness-column)")
    elif len(out_shapes) == 2:
        box_i = [i for i, s in enumerate(out_shapes) if s[-1] == 4]
        if len(box_i) != 1:
            raise SpecError(f"{label}: with two decoded outputs one must be boxes [N, boxes, 4]; got {out_shapes}")
        order = [box_i[0], 1 - box_i[0]]
        num_classes, outputs = out_shapes[order[1]][-1] - extra, TWO_OUTPUTS
    else:
        raise SpecError(f"{label}: decoded layout has 1 or 2 outputs, the model has {len(out_shapes)}")
    if len(out_shapes) != 1 and columns:
        raise SpecError(f"{label}: --box-column/--objectness-column/--class-column describe a single decoded output")
    dec = DecodedLayout(box_format=layout["box_format"], normalized=bool(layout.get("normalized_boxes", False)),
                        has_objectness=objectness, outputs=outputs, **columns)
    return DetectorSpec(input_height=h, input_width=w, num_classes=num_classes, decoded=dec,
                        class_names=tuple(class_names)), order
