#!/usr/bin/env python3
"""A model's network ONNX files (model*.onnx) without their weights, and the weights drawn again: how YOLOv4 608 (random
darknet-format weights to begin with) travels to the GPU host, where a call carries at most 64 MiB.

  python bench/onnx_weights.py strip SRC_DIR DEST_DIR   every *.onnx: initializers over 1 KiB keep their shape,
                                                        type and name but no data
  python bench/onnx_weights.py fill DIR                 every *.onnx there: each emptied initializer drawn again
                                                        (He-scaled normal for kernels, small normal otherwise);
                                                        the folder's load-time gate (gate.npz) is removed

Only for timing: a filled model computes what random weights compute, nothing the build's checks saw.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MIN_BYTES = 1024


def strip(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.suffix != ".onnx" or not path.name.startswith("model"):  # the network only; decode graphs stay
            shutil.copy2(path, dest / path.name) if path.is_file() else None
            continue
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            if len(init.raw_data) > MIN_BYTES:
                init.ClearField("raw_data")
                init.doc_string = "stripped"
        onnx.save(model, str(dest / path.name))


def fill(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    gate = folder / "gate.npz"  # the build's detections were of the weights stripped: the load gate would refuse
    if gate.exists():
        gate.unlink()
        print(f"{gate}: removed (weights drawn again; the engine is not checked at load)")
    for path in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            if init.doc_string != "stripped":
                continue
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            shape = tuple(init.dims)
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else 1
            std = np.sqrt(1.0 / fan_in) if len(shape) == 4 else 0.05
            init.CopyFrom(numpy_helper.from_array(rng.normal(0, std, shape).astype(dtype), init.name))
        onnx.save(model, str(path))


if __name__ == "__main__":
    {"strip": lambda: strip(Path(sys.argv[2]), Path(sys.argv[3])), "fill": lambda: fill(Path(sys.argv[2]))}[sys.argv[1]]()
