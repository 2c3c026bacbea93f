#!/usr/bin/env python3
"""Conversion time of build_repo.py for yolov4-tiny (pretrained) and the official YOLOv4 cfg.

  .venv/bin/python bench/conversion.py [--runs 1]

The full YOLOv4's pretrained weights are not on PyPI, so it is converted with random weights
written in darknet's format (same file size, same work). Each run is the whole CLI in a fresh
process: import, SavedModel, tf2onnx, parity gate, render, validate. Prints each stage line too.
"""
from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    from test_darknet import write_random_weights  # the same generator the OpenCV comparison uses
    from yolotriton.build.darknet import build_graph, parse_cfg

    tmp = Path(tempfile.mkdtemp())
    cfg = ROOT.parent / "shared" / "darknet" / "yolov4.cfg"
    weights = tmp / "yolov4-random.weights"
    write_random_weights(build_graph(parse_cfg(cfg)), weights)
    cases = {"yolov4-tiny 416 (pretrained)": [],
             "yolov4 608 (official cfg, random weights)": ["--cfg", str(cfg), "--weights", str(weights),
                                                          "--names", str(cfg.parent / "coco.names")]}
    results = []
    for label, flags in cases.items():
        for run in range(args.runs):
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, str(ROOT / "build_repo.py"), "--output", str(tmp / "repo"), *flags],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode:
                sys.exit(proc.stderr)
            stages = [l for l in proc.stdout.splitlines() if l.startswith("[") or "peak memory" in l]
            # the largest of this process's waited children so far: the build and its tf2onnx child (Linux: KiB)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
            print(f"## {label}, run {run + 1}: {wall:.1f}s wall, peak {peak:.1f} GB\n" + "\n".join(stages))
            results.append((label, wall, stages, peak))
    print("\n| model | wall time (s) | import | SavedModel | ONNX+check | parity | tf2onnx peak (GB) | build peak (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, wall, stages, peak in results:
        secs = [re.findall(r"\(([\d.]+)s\)|in ([\d.]+)s", s) for s in stages if not s.startswith("  ")]
        pick = lambda i: next((a or b for a, b in secs[i]), "?")
        tf2onnx = next((m.group(1) for s in stages for m in [re.search(r"tf2onnx: peak memory ([\d.]+) GB", s)] if m), "?")
        print(f"| {label} | {wall:.1f} | {pick(0)} | {pick(1)} | {pick(2)} | {pick(3)} | {tf2onnx} | {peak:.1f} |")


if __name__ == "__main__":
    main()
