"""TensorRT plan stage (`--target tensorrt`).

TensorRT cannot be installed on this project's machines, and the plan builder is still open
work (the TensorRT issue): this module only refuses clearly, before any slow stage runs.
"""
from __future__ import annotations

import importlib.util


class PlanError(RuntimeError):
    pass


def check_tensorrt_available() -> None:
    if importlib.util.find_spec("tensorrt") is None:
        raise PlanError("--target tensorrt needs the TensorRT Python package (import tensorrt failed); "
                        "use --target python or onnxruntime")
    raise PlanError("--target tensorrt: the TensorRT plan builder is not implemented yet; "
                    "use --target onnxruntime (Triton's ONNX Runtime backend) or python")


def build_plan(onnx_path, plan_path, settings, log) -> None:
    check_tensorrt_available()
