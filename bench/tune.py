#!/usr/bin/env python3
"""Tune the served repository by measurement and write the best configuration back into it.

  .venv/bin/python bench/tune.py [--repository model_repository] [--concurrency N] [--interval 3000] [--budget-s S]

Coordinate search from the repository's current settings over: detector instances x ONNX Runtime
threads, preprocess instances, dynamic-batching queue delay, max batch size (CPU detector); on a
GPU repository, detector instances per GPU, preprocess and postprocess instances (where those models
exist), queue delay, CUDA wait, at a concurrency that fills the GPU (64). Each candidate is
rendered into a scratch copy (weights hard-linked), served by a real tritonserver and measured with
perf_analyzer on real JPEGs; the best images/s wins. The winner is re-rendered into the repository
(staged and swapped in) and `tuning.md` beside it records every measured row with peak RSS.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import perf_analyzer, perf_input_file, photos, tree_peak_rss_mb  # noqa: E402

from yolotriton.build.pipeline import copy_repository, rerender  # noqa: E402
from yolotriton.build.repository import read_settings  # noqa: E402
from yolotriton.serve.server import ServerError, TritonServer  # noqa: E402

CORES = os.cpu_count() or 2
DIMENSIONS = [  # each a list of alternative settings; the search keeps the best of each in turn
    [{"detector_instances": i, "ort_threads": t} for i, t in ((1, CORES), (CORES, 1), (2, max(1, CORES // 2)), (1, 1))],
    [{"preprocess_instances": n} for n in (1, 2)],
    [{"max_queue_delay_us": d} for d in (0, 2000, 10000)],
    [{"max_batch_size": b} for b in (8, 4, 1)],
]


def dimensions(settings) -> list[list[dict]]:
    """What to search for this repository: the CPU list above, or the GPU one (each stub instance there is a
    process with its own CUDA context, so counts stay small; the CPU cores feed the postprocess)."""
    if not settings.detector_on_gpu:
        return DIMENSIONS if settings.preprocess_in != "detector" else [
            dim for dim in DIMENSIONS if "preprocess_instances" not in dim[0]]
    if settings.preprocess_in == "detector":  # one model, the whole pipeline: its instance count is the knob
        dims = [[{"detector_instances": n, "ort_threads": 1} for n in (4, 6, 8)]]
    else:
        pre = (2, 3, 4) if settings.preprocess_device == "gpu" else (CORES // 2, max(1, CORES - CORES // 4 - 1))
        dims = [
            [{"detector_instances": n, "ort_threads": 1} for n in (2, 3, 4)],
            [{"preprocess_instances": n} for n in pre],
        ]
    if settings.nms != "detector":  # with NMS in the detector there is no postprocess model to size
        dims.append([{"postprocess_instances": n}
                     for n in sorted({max(1, CORES // 8), max(1, CORES // 4), max(1, CORES // 2)})])
    return dims + [
        [{"max_queue_delay_us": d} for d in (0, 500, 2000)],
        [{"cuda_wait": w} for w in ("spin", "block")],
    ]


def measure(repo: Path, settings: dict, images_json: Path, concurrency: int, interval: int, work: Path, log) -> dict:
    scratch = work / "candidate"
    if scratch.exists():
        shutil.rmtree(scratch)
    copy_repository(repo, scratch)
    name = rerender(scratch, **settings).name
    try:
        with TritonServer(scratch, log_path=work / "tritonserver.log") as server:
            rows = perf_analyzer(server, name, work / "pa.csv",
                                 ["--input-data", str(images_json), "--concurrency-range", f"{concurrency}:{concurrency}",
                                  "--measurement-interval", str(interval)], lambda *_: None)
            rss = tree_peak_rss_mb(server.process.pid)
    except (ServerError, RuntimeError) as e:
        log(f"  {settings}: failed ({str(e).splitlines()[0]})")
        return {"settings": settings, "ips": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "rss_mb": 0.0}
    r = rows[0]
    out = {"settings": settings, "ips": float(r["Inferences/Second"]), "p50_ms": int(r["p50 latency"]) / 1000,
           "p99_ms": int(r["p99 latency"]) / 1000, "rss_mb": rss}
    log(f"  {settings}: {out['ips']:6.2f} img/s  p50 {out['p50_ms']:7.1f} ms  p99 {out['p99_ms']:7.1f} ms  "
        f"peak RSS {rss:6.0f} MB")
    return out


def tune(repo: Path, concurrency: int, interval: int, log=print, budget_s: float = 0) -> tuple[dict, list[dict]]:
    """Best settings found and every measured row; with budget_s, no new candidate starts after that many seconds."""
    work = Path(tempfile.mkdtemp(prefix="yolotriton-tune-"))
    images_json = work / "images.json"
    perf_input_file([p.read_bytes() for p in photos()], images_json)
    settings = read_settings(repo)
    dims = dimensions(settings)
    keys = {k for dim in dims for alt in dim for k in alt}
    t0 = time.perf_counter()
    current = {k: v for k, v in dataclasses.asdict(settings).items() if k in keys}
    rows: list[dict] = []
    seen: dict[tuple, dict] = {}
    best = None
    try:
        for dim in dims:
            for alt in dim:
                cand = {**current, **alt}
                key = tuple(sorted(cand.items()))
                if key not in seen:
                    if budget_s and best is not None and time.perf_counter() - t0 > budget_s:
                        log(f"  budget of {budget_s:.0f} s spent: {cand} and the rest not measured")
                        return best, rows
                    seen[key] = measure(repo, cand, images_json, concurrency, interval, work, log)
                    rows.append(seen[key])
                if best is None or seen[key]["ips"] > best["ips"]:
                    best = seen[key]
            current = dict(best["settings"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return best, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--concurrency", type=int, help="requests in flight (default 4; 64 for a GPU repository)")
    ap.add_argument("--interval", type=int, default=3000, help="perf_analyzer measurement interval (ms)")
    ap.add_argument("--budget-s", type=float, default=0, help="start no new candidate after this many seconds")
    args = ap.parse_args()
    log = lambda *a: print(*a, flush=True)
    if args.concurrency is None:
        args.concurrency = 64 if read_settings(args.repository).detector_on_gpu else 4
    log(f"[tune] {args.repository}, concurrency {args.concurrency}, JPEG photos in")
    best, rows = tune(args.repository, args.concurrency, args.interval, log, args.budget_s)
    rerender(args.repository, **best["settings"])
    lines = [f"# Tuning ({time.strftime('%Y-%m-%d %H:%M')}, {CORES} cores, perf_analyzer concurrency {args.concurrency})", "",
             f"Chosen and written into the configs: `{best['settings']}` ({best['ips']:.2f} img/s).", "",
             "| settings | images/s | p50 ms | p99 ms | server peak RSS MB |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['settings']}` | {r['ips']:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rss_mb']:.0f} |")
    (args.repository / "tuning.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))


if __name__ == "__main__":
    main()
