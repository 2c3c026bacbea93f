#!/usr/bin/env python3
"""Would INT8 lift the CPU ceiling? Static INT8 quantization of the built detector, measured for speed
and accuracy against FP32. A probe, not a build option: the answer here was "faster, not accurate".

  .venv/bin/python bench/int8_probe.py [--repository model_repository]

ONNX Runtime's quantize_static (QDQ, per-channel INT8 weights, UINT8 activations, calibrated on the
benchmark photos) in a few variants; the two head convolutions stay FP32 in all but the first. Speed is
the median ms of one image with 1 and 2 ORT threads; accuracy is the FP16 build gate's comparison
(plan.fp16_gate: every detection >= 0.30 must match in class, IoU >= 0.9, score within 0.05).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402


def median_ms(path: Path, x: np.ndarray, threads: int, calls: int = 20) -> float:
    import onnxruntime as ort

    from run import rate

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    _, latencies = rate(lambda: sess.run(None, {"images": x}), 1, seconds=0, min_calls=calls)
    return statistics.median(latencies)


def main():
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from run import photos
    from yolotriton.serve.local import LocalPipeline
    from yolotriton.build.plan import fp16_gate
    from yolotriton.build.repository import spec_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = ap.parse_args()
    fp32 = args.repository / "yolov4_detector" / "1" / "model.onnx"
    spec = spec_path(args.repository).read_text()
    batch, _ = LocalPipeline(args.repository).preprocess([p.read_bytes() for p in photos()])
    work = Path(tempfile.mkdtemp())
    pre = work / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre)).graph
    producer = {o: n for n in graph.node for o in n.output}
    heads = []  # each head's Conv and the Transpose after it
    for out in graph.output:
        node = producer[out.name]
        heads += [node.name, producer[node.input[0]].name]

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"images": x[None]} for x in batch])

        def get_next(self):
            return next(self.it, None)

    variants = {
        "all convs, MinMax": dict(calibrate_method=CalibrationMethod.MinMax),
        "heads FP32, MinMax": dict(nodes_to_exclude=heads, calibrate_method=CalibrationMethod.MinMax),
        "heads FP32, MinMax, 7-bit weights": dict(nodes_to_exclude=heads, calibrate_method=CalibrationMethod.MinMax,
                                                  reduce_range=True),
        "heads FP32, Entropy": dict(nodes_to_exclude=heads, calibrate_method=CalibrationMethod.Entropy),
        "heads FP32, Percentile, 7-bit weights": dict(nodes_to_exclude=heads, reduce_range=True,
                                                      calibrate_method=CalibrationMethod.Percentile),
    }
    x = batch[:1]
    print(f"{'model':<40} {'1 thread ms':>11} {'2 threads ms':>12}  accuracy vs FP32 on {len(batch)} photos")
    print(f"{'FP32 (the served model)':<40} {median_ms(fp32, x, 1):11.1f} {median_ms(fp32, x, 2):12.1f}")
    for i, (name, kw) in enumerate(variants.items()):
        out = work / f"int8_{i}.onnx"
        quantize_static(str(pre), str(out), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **kw)
        gate = fp16_gate(fp32, out, spec, batch)
        verdict = "passes" if gate.ok else (f"{len(gate.problems)} problems, worst score change "
                                            f"{gate.worst_score_delta:.2f}; e.g. {gate.problems[0]}")
        print(f"{'INT8 ' + name:<40} {median_ms(out, x, 1):11.1f} {median_ms(out, x, 2):12.1f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
