"""Import stage for darknet: parse a .cfg into a Keras functional model and load .weights into it.

Entry point: `import_darknet(cfg, weights, names)` -> `ImportedDetector`.
The cfg is parsed generically (no hard-coded YOLOv4 graph), so yolov4, yolov4-tiny and
other nets built from the same sections import the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .spec import DetectorSpec, SpecError, YoloHead, read_names

# OpenCV's darknet importer (our independent reference) normalises with
# (x - mean) / sqrt(var + eps); darknet itself uses sqrt(var) + 1e-6. Both agree to ~1e-6 relative
# on real statistics; we keep Keras' formula with a tiny eps so the stored statistics stay untouched.
BN_EPSILON = 1e-6

SUPPORTED_SECTIONS = ("net", "network", "convolutional", "route", "shortcut", "maxpool", "upsample", "yolo")
ACTIVATIONS = ("linear", "leaky", "mish", "logistic", "relu", "swish")


class CfgError(ValueError):
    """The cfg file cannot be turned into a model."""


class WeightsError(ValueError):
    """The weights file does not fit the cfg."""


@dataclass
class Section:
    kind: str
    options: dict[str, str]
    line: int

    def get(self, key: str, default=None, cast=str):
        if key not in self.options:
            return default
        try:
            return cast(self.options[key])
        except ValueError as e:
            raise CfgError(f"[{self.kind}] at line {self.line}: {key}={self.options[key]!r} is not a valid {cast.__name__}") from e

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.options[key].split(",") if v.strip()]


def parse_cfg(path: str | Path) -> list[Section]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"cfg file not found: {p}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CfgError(f"cannot read cfg {p}: {e}") from e
    sections: list[Section] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            sections.append(Section(m.group(1).lower(), {}, lineno))
        elif "=" in line and sections:
            k, v = line.split("=", 1)
            sections[-1].options[k.strip()] = v.strip()
        else:
            raise CfgError(f"{p}:{lineno}: cannot parse {raw.strip()!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise CfgError(f"{p}: a darknet cfg starts with a [net] section")
    for s in sections:
        if s.kind not in SUPPORTED_SECTIONS:
            raise CfgError(f"{p}:{s.line}: unsupported cfg section [{s.kind}] (supported: "
                           + ", ".join(f"[{k}]" for k in SUPPORTED_SECTIONS[1:]) + ")")
    return sections


@dataclass
class ConvRecord:
    """Where one [convolutional]'s weights go, in file order."""

    conv: object
    bn: object | None
    filters: int
    in_channels: int
    size: int


@dataclass
class DarknetGraph:
    model: object  # keras.Model
    spec: DetectorSpec
    convs: list[ConvRecord] = field(default_factory=list)
    nms: dict = field(default_factory=dict)  # the cfg's NMS rule (_nms_rule)

    @property
    def weight_count(self) -> int:
        """Float32 values a matching .weights file holds after its header."""
        n = 0
        for c in self.convs:
            n += c.filters * (4 if c.bn is not None else 1) + c.filters * c.in_channels * c.size * c.size
        return n


def _activation(layers, x, name: str, section: Section, idx: int):
    if name == "linear":
        return x
    if name == "leaky":
        return layers.LeakyReLU(negative_slope=0.1, name=f"leaky_{idx}")(x)
    if name == "mish":
        return layers.Activation("mish", name=f"mish_{idx}")(x)
    if name == "logistic":
        return layers.Activation("sigmoid", name=f"logistic_{idx}")(x)
    if name == "relu":
        return layers.ReLU(name=f"relu_{idx}")(x)
    if name == "swish":
        return layers.Activation("swish", name=f"swish_{idx}")(x)
    raise CfgError(f"[{section.kind}] at line {section.line}: unsupported activation {name!r} "
                   f"(supported: {', '.join(ACTIVATIONS)})")


def build_graph(sections: list[Section], class_names: tuple[str, ...] = ()) -> DarknetGraph:
    """Turn parsed sections into a Keras model whose outputs are the raw inputs of each [yolo] layer."""
    import keras
    from keras import layers

    net = sections[0]
    height, width, channels = net.get("height", 416, int), net.get("width", 416, int), net.get("channels", 3, int)
    if height % 32 or width % 32:
        raise CfgError(f"[net] width/height must be multiples of 32, got {width}x{height}")
    inp = keras.Input(shape=(height, width, channels), name="images")
    outputs: list = []  # output tensor of each layer, darknet indexing (net excluded)
    convs: list[ConvRecord] = []
    heads: list[tuple[Section, object]] = []

    def resolve(idx: int, ref: int, s: Section) -> int:
        j = idx + ref if ref < 0 else ref
        if not 0 <= j < idx:
            raise CfgError(f"[{s.kind}] at line {s.line}: layer reference {ref} points outside 0..{idx - 1}")
        return j

    for idx, s in enumerate(sections[1:]):
        prev = outputs[-1] if outputs else inp
        if s.kind == "convolutional":
            filters, size, stride = s.get("filters", 1, int), s.get("size", 1, int), s.get("stride", 1, int)
            if s.get("groups", 1, int) != 1 or s.get("dilation", 1, int) != 1:
                raise CfgError(f"[convolutional] at line {s.line}: grouped or dilated convolutions are not supported")
            bn = s.get("batch_normalize", 0, int) == 1
            pad = s.get("padding", size // 2 if s.get("pad", 0, int) else 0, int)
            y = prev
            if stride == 1 and 2 * pad == size - 1:
                mode = "same"
            else:
                # darknet pads symmetrically and drops what a stride does not reach: pad + 'valid' is exact
                if pad:
                    y = layers.ZeroPadding2D(pad, name=f"pad_{idx}")(y)
                mode = "valid"
            in_ch = int(y.shape[-1])
            conv = layers.Conv2D(filters, size, strides=stride, padding=mode, use_bias=not bn, name=f"conv_{idx}")
            y = conv(y)
            bn_layer = None
            if bn:
                bn_layer = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"bn_{idx}")
                y = bn_layer(y)
            y = _activation(layers, y, s.get("activation", "logistic"), s, idx)
            convs.append(ConvRecord(conv, bn_layer, filters, in_ch, size))
        elif s.kind == "route":
            refs = [resolve(idx, r, s) for r in s.ints("layers")]
            groups, group_id = s.get("groups", 1, int), s.get("group_id", 0, int)
            parts = []
            for j in refs:
                t = outputs[j]
                if groups > 1:
                    c = int(t.shape[-1]) // groups
                    t = t[..., group_id * c:(group_id + 1) * c]  # yolov4-tiny's CSP split
                parts.append(t)
            y = parts[0] if len(parts) == 1 else layers.Concatenate(axis=-1, name=f"route_{idx}")(parts)
        elif s.kind == "shortcut":
            j = resolve(idx, s.ints("from")[0], s)
            if s.get("weights_type", "none") != "none":
                raise CfgError(f"[shortcut] at line {s.line}: weighted shortcuts are not supported")
            y = layers.Add(name=f"shortcut_{idx}")([prev, outputs[j]])
            y = _activation(layers, y, s.get("activation", "linear"), s, idx)
        elif s.kind == "maxpool":
            size = s.get("size", 1, int)
            stride = s.get("stride", size, int)
            padding = s.get("padding", size - 1, int)
            h_in, w_in = int(prev.shape[1]), int(prev.shape[2])
            want = ((h_in + padding - size) // stride + 1, (w_in + padding - size) // stride + 1)
            if stride == 1 and padding == size - 1 and size % 2 == 1:
                y = layers.MaxPooling2D(size, strides=1, padding="same", name=f"maxpool_{idx}")(prev)
            elif padding // 2 == 0 and ((h_in - size) // stride + 1, (w_in - size) // stride + 1) == want:
                y = layers.MaxPooling2D(size, strides=stride, padding="valid", name=f"maxpool_{idx}")(prev)
            else:
                raise CfgError(f"[maxpool] at line {s.line}: size={size} stride={stride} on {w_in}x{h_in} "
                               "needs asymmetric padding, which is not supported")
            if tuple(y.shape[1:3]) != want:
                raise CfgError(f"[maxpool] at line {s.line}: output {tuple(y.shape[1:3])} != darknet's {want}")
        elif s.kind == "upsample":
            y = layers.UpSampling2D(s.get("stride", 2, int), interpolation="nearest", name=f"upsample_{idx}")(prev)
        elif s.kind == "yolo":
            heads.append((s, prev))
            y = prev
        else:  # a second [net]
            raise CfgError(f"[{s.kind}] at line {s.line}: only the first section may be [net]")
        outputs.append(y)

    if not heads:
        raise CfgError("the cfg has no [yolo] layer: nothing to detect with")
    spec = _head_spec(heads, height, width, class_names)
    model = keras.Model(inp, [t for _, t in heads], name="darknet")
    return DarknetGraph(model, spec, convs, _nms_rule(heads[0][0]))


def _nms_rule(yolo: Section) -> dict:
    """The NMS darknet runs for this cfg (first [yolo]'s nms_kind and beta_nms, darknet's defaults greedynms and
    0.6), as RepositorySettings fields."""
    kind = yolo.get("nms_kind", "greedynms")
    if kind not in ("greedynms", "diounms"):
        raise CfgError(f"[yolo] at line {yolo.line}: nms_kind={kind} is not supported (greedynms or diounms)")
    return {"nms_kind": "diou" if kind == "diounms" else "greedy", "beta_nms": yolo.get("beta_nms", 0.6, float)}


def _head_spec(heads, height: int, width: int, class_names) -> DetectorSpec:
    out = []
    num_classes = None
    for i, (s, t) in enumerate(heads):
        classes = s.get("classes", 80, int)
        if num_classes not in (None, classes):
            raise CfgError(f"[yolo] at line {s.line}: classes={classes} differs from an earlier [yolo] ({num_classes})")
        num_classes = classes
        all_anchors = s.ints("anchors") if "anchors" in s.options else []
        if len(all_anchors) % 2:
            raise CfgError(f"[yolo] at line {s.line}: anchors must be w,h pairs")
        pairs = [(float(all_anchors[k]), float(all_anchors[k + 1])) for k in range(0, len(all_anchors), 2)]
        mask = s.ints("mask") if "mask" in s.options else list(range(len(pairs)))
        if any(m >= len(pairs) for m in mask):
            raise CfgError(f"[yolo] at line {s.line}: mask {mask} refers past the {len(pairs)} anchors")
        grid = (int(t.shape[1]), int(t.shape[2]))
        ch = int(t.shape[-1])
        if ch != len(mask) * (5 + classes):
            raise CfgError(f"[yolo] at line {s.line}: the layer before it has {ch} filters, expected "
                           f"{len(mask)}*(5+{classes}) = {len(mask) * (5 + classes)}")
        out.append(YoloHead(name=f"head_{i}", anchors=tuple(pairs[m] for m in mask), stride=width // grid[1],
                            grid=grid, scale_x_y=s.get("scale_x_y", 1.0, float),
                            new_coords=s.get("new_coords", 0, int) == 1))
    try:
        return DetectorSpec(input_height=height, input_width=width, num_classes=num_classes, heads=tuple(out),
                            class_names=tuple(class_names))
    except SpecError as e:
        raise CfgError(str(e)) from e


def read_weights(path: str | Path) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Header (major, minor, revision, seen) and the float32 body of a darknet .weights file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    data = p.read_bytes()
    if len(data) < 16:
        raise WeightsError(f"{p}: {len(data)} bytes is too short for a darknet weights header")
    major, minor, revision = np.frombuffer(data[:12], dtype="<i4")
    wide_seen = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
    head = 20 if wide_seen else 16
    seen = int(np.frombuffer(data[12:head], dtype="<u8" if wide_seen else "<u4")[0])
    body = data[head:]
    if len(body) % 4:
        raise WeightsError(f"{p}: body of {len(body)} bytes is not a whole number of float32 values")
    return (int(major), int(minor), int(revision), seen), np.frombuffer(body, dtype="<f4")


def load_weights(graph: DarknetGraph, path: str | Path) -> None:
    _, values = read_weights(path)
    need = graph.weight_count
    if values.size != need:
        diff = values.size - need
        raise WeightsError(f"{path}: holds {values.size:,} values but the cfg needs {need:,} "
                           f"({abs(diff):,} {'too many' if diff > 0 else 'too few'}): weights and cfg do not match")
    pos = 0

    def take(n):
        nonlocal pos
        out = values[pos:pos + n]
        pos += n
        return out

    for c in graph.convs:
        f = c.filters
        if c.bn is not None:
            beta, gamma, mean, var = take(f), take(f), take(f), take(f)
            kernel = take(f * c.in_channels * c.size * c.size).reshape(f, c.in_channels, c.size, c.size)
            c.conv.set_weights([kernel.transpose(2, 3, 1, 0)])
            c.bn.set_weights([gamma, beta, mean, var])
        else:
            bias = take(f)
            kernel = take(f * c.in_channels * c.size * c.size).reshape(f, c.in_channels, c.size, c.size)
            c.conv.set_weights([kernel.transpose(2, 3, 1, 0), bias])


def import_darknet(cfg: str | Path, weights: str | Path, names: str | Path | None = None):
    from .detector import ImportedDetector

    class_names = read_names(names) if names else ()
    # Check the weights file's existence before the (slow) graph build.
    if not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    graph = build_graph(parse_cfg(cfg), class_names)
    load_weights(graph, weights)
    return ImportedDetector(model=graph.model, spec=graph.spec, source=f"darknet {Path(cfg).name} + {Path(weights).name}",
                            nms_rule=graph.nms)
