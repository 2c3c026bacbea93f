"""The GPU preprocess's resize as a small ONNX graph (run by ONNX Runtime's CUDA provider in the stub).

Entry point: `write_resize_onnx(path, fill)`. Written into the preprocess model folder at render time.

  image  uint8 [h, w, 3] (any size)      sizes int64 [4] = 1, 3, resized_h, resized_w
  pads   int64 [8] (NHWC begin/end: 0, top, left, 0, 0, bottom, right, 0)
  -> resized float32 [1, net_h, net_w, 3] in [0, 1]

Resize is bilinear with half-pixel centres, no antialiasing: OpenCV's INTER_LINEAR. OpenCV rounds
its uint8 result before the preprocess scales it, so the graph rounds too (Round is half-to-even,
OpenCV half-up: pixels may differ by 1/255, which the end-to-end detection tests bound). Why an ONNX
graph and not CV-CUDA or CuPy: ONNX Runtime with CUDA is already in the serving environment for the
detector, so the GPU resize adds no package (CV-CUDA's wheel is 128 MB, CuPy's 55 MB).
"""
from __future__ import annotations

from pathlib import Path

OPSET = 18


def resize_model(fill: float):
    import onnx
    from onnx import TensorProto, helper

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


def write_resize_onnx(path: Path, fill: float) -> None:
    import onnx

    onnx.save(resize_model(fill), str(path))
