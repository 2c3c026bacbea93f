#!/usr/bin/env python3
"""Conversion time and memory of build_repo.py: yolov4-tiny (pretrained), the official YOLOv4 cfg (CPU and GPU
builds), and any cfg given with --cfg (e.g. a Scaled-YOLOv4 csp-x from AlexeyAB's darknet repository).

  .venv/bin/python bench/conversion.py [--runs 1] [--cfg PATH ...]

The full YOLOv4's pretrained weights are not on PyPI, so it (and every --cfg) is converted with random weights
written in darknet's format (same file size, same work; a --cfg's heads silenced, see below). Each run is the whole CLI in a fresh process: import,
SavedModel, tf2onnx, parity gate, FP16 and its gate (GPU build), render, validate. While it runs, the resident
memory of the build process and of its tf2onnx child are sampled every 0.1 s; each stage's peak is the largest
sample between its log line and the one before (a benchmark row, not a test: a regression shows here).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024 ** 2
    except (OSError, StopIteration):
        return 0.0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def run_build(argv: list[str]) -> tuple[float, list[tuple[str, float, float]]]:
    """The build's wall time and its stage lines, each with (build process peak GB, converter child peak GB)
    since the line before."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "build_repo.py"), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seg = {"build": 0.0, "child": 0.0}

    def sample():
        while proc.poll() is None:
            seg["build"] = max(seg["build"], _rss_gb(proc.pid))
            seg["child"] = max([seg["child"], *(_rss_gb(c) for c in _children(proc.pid))])
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    t, lines, tail = time.perf_counter(), [], []
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        if line.startswith("[") or line.startswith("  tf2onnx:"):
            lines.append((line, seg["build"], seg["child"]))
            seg["build"], seg["child"] = _rss_gb(proc.pid), 0.0
    if proc.wait():
        sys.exit("\n".join(tail))
    return time.perf_counter() - t, lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cfg", action="append", default=[], type=Path, help="another darknet cfg (random weights)")
    args = ap.parse_args()
    from test_darknet import write_random_weights  # the same generator the OpenCV comparison uses
    from yolotriton.build.darknet import build_graph, parse_cfg

    tmp = Path(tempfile.mkdtemp())
    official = ROOT.parent / "shared" / "darknet" / "yolov4.cfg"
    gpu = ["--detector-device", "gpu", "--host-cores", "16", "--host-gpus", "1"]
    cases = {"yolov4-tiny 416 (pretrained)": []}
    for cfg in [official, *args.cfg]:
        weights = tmp / f"{cfg.stem}-random.weights"
        # another cfg's heads are silenced: random csp-x weights saturate them, and there TF's traced and eager
        # runs (the parity gate's reference) differ in a few values by 1 (2026-12-04); memory is the same
        write_random_weights(build_graph(parse_cfg(cfg)), weights, silent_heads=cfg != official)
        flags = ["--cfg", str(cfg), "--weights", str(weights), "--names", str(official.parent / "coco.names")]
        cases[f"{cfg.stem} (random weights, {weights.stat().st_size / 4e6:.1f} M parameters)"] = flags
        cases[f"{cfg.stem}, --detector-device gpu (FP16 + its gate)"] = flags + gpu
    summary = []
    for label, flags in cases.items():
        for run in range(args.runs):
            wall, lines = run_build(["--output", str(tmp / "repo"), *flags])
            build_peak = max(b for _, b, _ in lines)
            child_peak = max(c for _, _, c in lines)
            print(f"\n## {label}, run {run + 1}: {wall:.1f} s wall; peak: build process {build_peak:.2f} GB, "
                  f"tf2onnx child {child_peak:.2f} GB\n\n| stage (its log line) | build process GB | tf2onnx GB |\n"
                  "|---|---|---|")
            for line, b, c in lines:
                print(f"| `{line.strip()[:90]}` | {b:.2f} | {c:.2f} |")
            summary.append((label, wall, build_peak, child_peak))
    print("\n| model | wall time (s) | build process peak (GB) | tf2onnx child peak (GB) |\n|---|---|---|---|")
    for label, wall, b, c in summary:
        print(f"| {label} | {wall:.1f} | {b:.2f} | {c:.2f} |")


if __name__ == "__main__":
    main()
