"""Decode raw YOLO heads into the top-K (box, class) candidates, as a small ONNX graph the detector runs.

Entry point: `write_candidates_onnx(path, spec)`, written into the Python detector's folder at render time
(`--decode detector`). The detector stub runs it right after the network, in the same ONNX Runtime
provider (on the GPU, on its CUDA stream): the heads never leave the device, and what comes back to the
host is K rows per image instead of every head (4096 x 6 floats instead of 7.7 MB for YOLOv4 608).

  one input per head, the network's own output [N, grid_h, grid_w, A*(5+C)]
  -> candidate_boxes float32 [N, K, 4] (x1, y1, x2, y2, network-input pixels)
     candidate_scores float32 [N, K] (objectness x class score, best first)
     candidate_classes int32 [N, K]

It is `decode.Candidates`'s raw-head arithmetic, operation for operation (same float32 order), and the
postprocess then does exactly what it does on the host path: keep scores above the request's threshold,
class-aware NMS. K is the postprocess's pre-NMS cap (decode.PRE_NMS_TOP_K): the host path keeps the
best K of the candidates above the threshold, this graph the best K of all; after the threshold both are
the same set (up to ties), so the two paths give the same detections.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.decode import CANDIDATE_OUTPUTS, PRE_NMS_TOP_K
from .spec import DetectorSpec

OPSET = 18


def _box_count(spec: DetectorSpec) -> int:
    return sum(h.grid[0] * h.grid[1] * len(h.anchors) for h in spec.heads)


def candidate_count(spec: DetectorSpec, pre_nms_top_k: int = PRE_NMS_TOP_K) -> int:
    """K: the pre-NMS cap, or every (box, class) pair of a model that has fewer."""
    return min(int(pre_nms_top_k), _box_count(spec) * spec.num_classes)


def candidates_model(spec: DetectorSpec, pre_nms_top_k: int = PRE_NMS_TOP_K):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not spec.heads:
        raise ValueError("decoding in the detector needs raw YOLO heads (this model's outputs are already decoded)")
    c = spec.num_classes
    nodes, inits, inputs = [], [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    axis2 = const("axis2", np.array([2], np.int64))
    box_parts, score_parts = [], []
    for i, h in enumerate(spec.heads):
        gh, gw = h.grid
        a = len(h.anchors)
        n = gh * gw * a
        p = f"h{i}_"
        inputs.append(helper.make_tensor_value_info(h.name, TensorProto.FLOAT, ["batch", gh, gw, a * (5 + c)]))
        t = node("Reshape", [h.name, const(p + "shape", np.array([-1, n, 5 + c], np.int64))], p + "t")

        def part(lo: int, hi: int, name: str) -> str:
            return node("Slice", [t, const(p + name + "_lo", np.array([lo], np.int64)),
                                  const(p + name + "_hi", np.array([hi], np.int64)), axis2], p + name)

        xy, wh, obj, cls = part(0, 2, "xy"), part(2, 4, "wh"), part(4, 5, "obj"), part(5, 5 + c, "cls")
        done = {"xy", "obj", "cls"} if h.new_coords else set(h.activated)  # groups the model already decoded
        if "obj" not in done:
            obj = node("Sigmoid", [obj], p + "obj_s")
        if "xy" not in done:
            xy = node("Sigmoid", [xy], p + "xy_s")
        if "cls" not in done:
            cls = node("Sigmoid", [cls], p + "cls_s")
        if h.new_coords:  # (2 t)^2
            wh2 = node("Mul", [wh, const(p + "two", np.float32(2.0))], p + "wh2")
            wh = node("Mul", [wh2, wh2], p + "wh_d")
        elif "wh" not in done:
            wh = node("Exp", [wh], p + "wh_e")
        s = float(h.scale_x_y)
        if not h.scale_x_y_applied:
            xy = node("Sub", [node("Mul", [xy, const(p + "sxy", np.float32(s))], p + "xy_m"),
                              const(p + "sxy_off", np.float32(0.5 * (s - 1)))], p + "offset")
        ys, xs = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
        grid = np.repeat(np.stack([xs, ys], axis=-1).reshape(gh * gw, 1, 2), a, axis=1).reshape(1, n, 2)
        anchors = np.tile(np.asarray(h.anchors, np.float32), (gh * gw, 1)).reshape(1, n, 2)
        scale = np.array([spec.input_width / gw, spec.input_height / gh], np.float32)
        centre = node("Mul", [node("Add", [xy, const(p + "grid", grid)], p + "cg"), const(p + "scale", scale)],
                      p + "centre")
        half = node("Div", [node("Mul", [wh, const(p + "anchors", anchors)], p + "size"),
                            const(p + "two_f", np.float32(2.0))], p + "half")
        box_parts.append(node("Concat", [node("Sub", [centre, half], p + "lo"), node("Add", [centre, half], p + "hi")],
                              p + "boxes", axis=2))
        score_parts.append(node("Mul", [obj, cls], p + "scores"))
    total = _box_count(spec)
    k = candidate_count(spec, pre_nms_top_k)
    boxes = node("Concat", box_parts, "boxes", axis=1) if len(box_parts) > 1 else box_parts[0]
    scores = node("Concat", score_parts, "scores", axis=1) if len(score_parts) > 1 else score_parts[0]
    flat = node("Reshape", [scores, const("flat_shape", np.array([-1, total * c], np.int64))], "flat")
    nodes.append(helper.make_node("TopK", [flat, const("k", np.array([k], np.int64))],
                                  ["candidate_scores", "index"], axis=-1, largest=1, sorted=1))
    # index = box * C + class (Div on non-negative int64 truncates); no Mod: its CUDA kernel is not in every build
    box_index = node("Div", ["index", const("num_classes", np.int64(c))], "box_index")
    cls64 = node("Sub", ["index", node("Mul", [box_index, "num_classes"], "box_base")], "class64")
    node("Cast", [cls64], "candidate_classes", to=TensorProto.INT32)
    gather = node("Expand", [node("Unsqueeze", [box_index, const("last", np.array([-1], np.int64))], "bi1"),
                             const("four", np.array([1, 1, 4], np.int64))], "gather_index")
    node("GatherElements", [boxes, gather], "candidate_boxes", axis=1)
    outputs = [helper.make_tensor_value_info(name, dtype, ["batch", k, *dims]) for name, dtype, dims in
               zip(CANDIDATE_OUTPUTS, (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT32), ([4], [], []))]
    graph = helper.make_graph(nodes, "yolotriton_candidates", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="yolotriton")
    model.ir_version = 8  # readable by every ONNX Runtime this project pins or carries
    onnx.checker.check_model(model, full_check=True)
    return model


def write_candidates_onnx(path: Path, spec: DetectorSpec, pre_nms_top_k: int = PRE_NMS_TOP_K) -> None:
    import onnx

    onnx.save(candidates_model(spec, pre_nms_top_k), str(path))
