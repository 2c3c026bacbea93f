"""The GPU preprocess's resize as a small ONNX graph (run by ONNX Runtime's CUDA provider in the stub).

Entry points: `write_resize_onnx(path, fill)` (one image) and `write_resize_batches(folder, fill, most)`
(`resize_x{k}.onnx`, k = 2..most images in one call). Written into the preprocess model folder at render time.

  image  uint8 [h, w, 3] (any size)      sizes int64 [4] = 1, 3, resized_h, resized_w
  pads   int64 [8] (NHWC begin/end: 0, top, left, 0, 0, bottom, right, 0)
  -> resized float32 [1, net_h, net_w, 3] in [0, 1]

The k-image graph is k copies of the same arithmetic side by side, inputs image_i [1, h_i, w_i, 3], sizes_i,
pads_i and outputs resized_i (i = 0..k-1), so one ONNX Runtime call resizes k images of different sizes:
measured on the H200, the per-call cost of a one-image run was 0.19 ms of the stub's CPU per image.

Resize is bilinear with half-pixel centres, no antialiasing: OpenCV's INTER_LINEAR. OpenCV rounds
its uint8 result before the preprocess scales it, so the graph rounds too (Round is half-to-even,
OpenCV half-up: pixels may differ by 1/255, which the end-to-end detection tests bound). Why an ONNX
graph and not CV-CUDA or CuPy: ONNX Runtime with CUDA is already in the serving environment for the
detector, so the GPU resize adds no package (CV-CUDA's wheel is 128 MB, CuPy's 55 MB).
"""
from __future__ import annotations

from pathlib import Path

OPSET = 18


def resize_model(fill: float, images: int = 1):
    import onnx
    from onnx import TensorProto, helper

    if images > 1:
        return _batch_model(fill, images)
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "axis0"], ["nhwc"]),
        helper.make_node("Transpose", ["nhwc"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Resize", ["nchw", "", "", "sizes"], ["r"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Round", ["r"], ["rr"]),
        helper.make_node("Transpose", ["rr"], ["rhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Mul", ["rhwc", "inv255"], ["scaled"]),
        helper.make_node("Pad", ["scaled", "pads", "fill"], ["resized"], mode="constant"),
    ]
    graph = helper.make_graph(
        nodes, "yolotriton_resize",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["h", "w", 3]),
         helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
         helper.make_tensor_value_info("pads", TensorProto.INT64, [8])],
        [helper.make_tensor_value_info("resized", TensorProto.FLOAT, [1, "H", "W", 3])],
        initializer=[helper.make_tensor("axis0", TensorProto.INT64, [1], [0]),
                     helper.make_tensor("inv255", TensorProto.FLOAT, [], [1 / 255]),
                     helper.make_tensor("fill", TensorProto.FLOAT, [], [float(fill)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="yolotriton")
    model.ir_version = 8  # readable by every ONNX Runtime this project pins or carries
    onnx.checker.check_model(model, full_check=True)
    return model


def _batch_model(fill: float, k: int):
    import onnx
    from onnx import TensorProto, helper

    nodes, inputs, outputs = [], [], []
    for i in range(k):
        n = lambda name: f"{name}_{i}"  # noqa: E731
        nodes += [
            helper.make_node("Cast", [n("image")], [n("f")], to=TensorProto.FLOAT),
            helper.make_node("Transpose", [n("f")], [n("nchw")], perm=[0, 3, 1, 2]),
            helper.make_node("Resize", [n("nchw"), "", "", n("sizes")], [n("r")], mode="linear",
                             coordinate_transformation_mode="half_pixel"),
            helper.make_node("Round", [n("r")], [n("rr")]),
            helper.make_node("Transpose", [n("rr")], [n("rhwc")], perm=[0, 2, 3, 1]),
            helper.make_node("Mul", [n("rhwc"), "inv255"], [n("scaled")]),
            helper.make_node("Pad", [n("scaled"), n("pads"), "fill"], [n("resized")], mode="constant"),
        ]
        inputs += [helper.make_tensor_value_info(n("image"), TensorProto.UINT8, [1, n("h"), n("w"), 3]),
                   helper.make_tensor_value_info(n("sizes"), TensorProto.INT64, [4]),
                   helper.make_tensor_value_info(n("pads"), TensorProto.INT64, [8])]
        outputs.append(helper.make_tensor_value_info(n("resized"), TensorProto.FLOAT, [1, "H", "W", 3]))
    graph = helper.make_graph(
        nodes, f"yolotriton_resize_x{k}", inputs, outputs,
        initializer=[helper.make_tensor("inv255", TensorProto.FLOAT, [], [1 / 255]),
                     helper.make_tensor("fill", TensorProto.FLOAT, [], [float(fill)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="yolotriton")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_resize_onnx(path: Path, fill: float) -> None:
    import onnx

    onnx.save(resize_model(fill), str(path))


def write_resize_batches(folder: Path, fill: float, most: int) -> None:
    """resize_x2.onnx .. resize_x{most}.onnx beside resize.onnx (a few kB each: no weights), the names
    preprocess.py loads for its `resize_batch` parameter."""
    import onnx

    for k in range(2, most + 1):
        onnx.save(resize_model(fill, k), str(Path(folder) / f"resize_x{k}.onnx"))
