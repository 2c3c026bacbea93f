#!/usr/bin/env python3
"""GPU host benchmark, in one run: the served ensemble (perf_analyzer, JPEG bytes in, concurrency sweep)
against in-process ONNX Runtime CUDA on the same GPU, with the CPU cost of every server process.

  python bench/gpu.py --repo R --photos DIR --out DIR [--concurrency 1,8,32,64,128] [--cpu-preprocess N]

R is a repository built with --detector-device gpu (GPU preprocess by default). Rows, all measured here:
- in-process ORT CUDA, batch 1 and 8 (the detector's model.onnx; numpy in, numpy out), and batch 8 through
  OrtDetector with its CUDA graph (the served detector's engine);
- the served ensemble (perf_analyzer over gRPC, --input-data with the photos' JPEG bytes) at each
  concurrency, with GPU utilisation sampled by nvidia-smi during each level;
- CPU ms per image of tritonserver and of each model's stubs at the best concurrency (perf_analyzer's own
  CPU separately), from /proc and wait4 as in make bench;
- the served detector alone at batch 8 (random FP32 input through CUDA shared memory, else system), or,
  where the detector is the whole pipeline (--preprocess-in detector), called directly with the JPEGs;
- with --cpu-preprocess N: the same ensemble re-rendered with the CPU preprocess and N instances;
- with --also KEY=VALUE,...: the same ensemble re-rendered with those settings (e.g. nms=postprocess);
- with --images-per-request N: N JPEGs per request (perf_analyzer -b N) at the best concurrency / N.
Run by scripts/gpu_host.sh on the lent GPU machine (no network there: wheels travel with the call).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

import run  # noqa: E402  (perf_input_file, cpu_breakdown: the same measurement as make bench)
from yolotriton.repository import read_settings  # noqa: E402


def in_process(model: Path, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    import onnxruntime as ort

    cuda = {"cudnn_conv_algo_search": "HEURISTIC"}
    sess = ort.InferenceSession(str(model), providers=[("CUDAExecutionProvider", cuda)])
    assert sess.get_providers()[0] == "CUDAExecutionProvider", sess.get_providers()
    ips, lat = run.rate(lambda: sess.run(None, {"images": batch}), len(batch), seconds)
    return ips, statistics.median(lat)


def in_process_graphs(model: Path, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """The served detector's engine in-process: OrtDetector with its CUDA graph for this batch size."""
    from yolotriton.ort_detector import OrtDetector

    det = OrtDetector(str(model), None, max_batch=len(batch), cuda=True, cuda_wait="spin")
    ips, lat = run.rate(lambda: det([batch]), len(batch), seconds)
    return ips, statistics.median(lat)


class GpuSampler:
    """nvidia-smi's GPU utilisation, sampled every 200 ms while a level runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(0.2):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                self.samples.append(float(out[0]))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


def model_stats(server) -> dict[str, dict]:
    """Triton's cumulative statistics per model: requests, executions (batches), queue and compute ns."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    out = {}
    for m in client.get_inference_statistics(as_json=True)["model_stats"]:
        st = m.get("inference_stats", {})
        ns = lambda k: int(st.get(k, {}).get("ns", 0))
        out[m["name"]] = {"requests": int(st.get("success", {}).get("count", 0)),
                          "executions": int(m.get("execution_count", 0)),
                          "queue": ns("queue"), "compute": ns("compute_input") + ns("compute_infer") + ns("compute_output")}
    return out


def stage_lines(before: dict, after: dict) -> list[str]:
    """Per member model during one level: mean batch, queue and compute ms per request."""
    lines = []
    for name, a in sorted(after.items()):
        b = before.get(name, {})
        n = a["requests"] - b.get("requests", 0)
        if n <= 0 or name.endswith("_raw"):
            continue
        ex = max(1, a["executions"] - b.get("executions", 0))
        lines.append(f"    {name:<20} {n:6d} requests, mean batch {n / ex:4.1f}, queue "
                     f"{(a['queue'] - b.get('queue', 0)) / n / 1e6:6.2f} ms, compute "
                     f"{(a['compute'] - b.get('compute', 0)) / n / 1e6:6.2f} ms per request")
    return lines


def sweep(server, levels, images_json: Path, tmp: Path, log, images_per_request: int = 1) -> list[dict]:
    rows = []
    for c in levels:
        before = model_stats(server)
        try:
            with GpuSampler() as gpu:
                got = run.perf_analyzer(server, "yolov4", tmp / f"c{c}.csv",
                                        ["--input-data", str(images_json), "--concurrency-range", f"{c}:{c}",
                                         "-b", str(images_per_request)], log)
        except (RuntimeError, FileNotFoundError) as e:  # one level failing must not lose the others
            log(f"  concurrency {c} failed: {str(e)[-1500:]}")
            continue
        for r in got:
            r["gpu_util"], r["images_per_request"] = gpu.median, images_per_request
        log(f"    GPU utilisation (median of nvidia-smi samples): {gpu.median:.0f}%")
        for line in stage_lines(before, model_stats(server)):
            log(line)
        rows += got
    if not rows:
        raise RuntimeError("no concurrency level completed")
    return rows


def served(repo: Path, levels, images_json: Path, tmp: Path, out: Path, label: str, log, detector_alone=False,
           images_per_request: int = 1, detector_batches=()):
    from yolotriton.server import TritonServer

    res = {}
    with TritonServer(repo, log_path=out / f"tritonserver-{label}.log") as server:
        log(f"[gpu] {label}: served ensemble, perf_analyzer, JPEG bytes in")
        rows = sweep(server, levels, images_json, tmp, log)
        best = max(rows, key=lambda r: float(r["Inferences/Second"]))
        res["rows"], res["best"] = rows, best
        conc = int(best["Concurrency"])
        log(f"[gpu] {label}: CPU per image at concurrency {conc}")
        res["cpu_ips"], res["cpu"] = run.cpu_breakdown(server, conc, images_json, log)
        if images_per_request > 1:  # the same images in flight, sent N to a request (the client's detect_batch)
            n = images_per_request
            log(f"[gpu] {label}: {n} images per request")
            batched = sweep(server, sorted({max(1, conc // n), max(1, 2 * conc // n)}), images_json, tmp, log, n)
            best_b = max(batched, key=lambda r: float(r["Inferences/Second"]))
            res["rows"] += batched
            res["batched"] = {"best": best_b}
            res["batched"]["cpu_ips"], res["batched"]["cpu"] = run.cpu_breakdown(
                server, int(best_b["Concurrency"]), images_json, log, images_per_request=n)
        for b in detector_batches:  # one request of b images at a time: the detector's time per batch size
            try:
                d = run.perf_analyzer(server, "yolov4_detector", tmp / f"det-b{b}.csv",
                                      ["-b", str(b), "--input-data", "random", "--concurrency-range", "1:1"], log)
                res.setdefault("detector_batches", {})[b] = (float(d[0]["Inferences/Second"]),
                                                             int(d[0]["p50 latency"]) / 1000)
            except RuntimeError as e:
                log(f"    detector batch {b} failed: {str(e)[-300:]}")
        if detector_alone and read_settings(repo).preprocess_in == "detector":
            # The detector is the whole pipeline: called directly with the same JPEGs, without the ensemble's step
            log(f"[gpu] {label}: the detector model called directly (no ensemble), JPEG bytes in")
            d = run.perf_analyzer(server, "yolov4_detector", tmp / "det-direct.csv",
                                  ["--input-data", str(images_json), "--concurrency-range", f"{conc}:{conc}"], log)
            res["direct"] = (conc, float(d[0]["Inferences/Second"]), int(d[0]["p50 latency"]) / 1000)
        elif detector_alone:
            log(f"[gpu] {label}: served detector alone, batch 8, random FP32 input")
            for shm in ("cuda", "system"):
                try:
                    d = run.perf_analyzer(server, "yolov4_detector", tmp / f"det-{shm}.csv",
                                          ["-b", "8", "--input-data", "random", "--shared-memory", shm,
                                           "--concurrency-range", "4:4"], log)
                    res["detector"] = (shm, float(d[0]["Inferences/Second"]))
                    break
                except RuntimeError as e:
                    log(f"    shared memory {shm} failed: {str(e)[-300:]}")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, required=True, help="built with --detector-device gpu")
    ap.add_argument("--photos", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--concurrency", default="1,8,32,64,128")
    ap.add_argument("--cpu-preprocess", type=int, default=0,
                    help="also serve the same repository with the CPU preprocess and this many instances")
    ap.add_argument("--images-per-request", type=int, default=1,
                    help="also send N JPEGs per request (perf_analyzer -b N) at the best concurrency / N, with its "
                         "CPU per image")
    ap.add_argument("--detector-batches", default="",
                    help="e.g. 1,2,3,8: in-process ORT CUDA and the served detector alone (one request at a time) "
                         "at each batch size")
    ap.add_argument("--also", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="also serve a re-rendered copy with these settings (e.g. nms=postprocess); repeatable")
    ap.add_argument("--also-concurrency", default="", help="levels for the --also variants (default: the top two)")
    ap.add_argument("--mps", action="store_true",
                    help="run the servers under NVIDIA MPS (started here, stopped at the end): the stubs' CUDA "
                         "contexts then share the GPU instead of being time-sliced")
    args = ap.parse_args()
    if args.mps:
        subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True)
        time.sleep(1)
    try:
        report(args)
    finally:
        if args.mps:
            try:  # quit waits for MPS clients; a stub left behind must not hang the run
                subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, timeout=20)
            except subprocess.TimeoutExpired:
                print("[gpu] MPS control daemon did not quit within 20 s", flush=True)


def report(args):
    log = lambda *a: print(*a, flush=True)
    import onnxruntime as ort

    from yolotriton import images
    from yolotriton.build import copy_repository, instance_summary, rerender
    from yolotriton.repository import spec_path

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    blobs = [p.read_bytes() for p in sorted(args.photos.glob("*.jpg"))]
    run.perf_input_file(blobs, tmp / "images.json")
    spec = json.loads(spec_path(args.repo).read_text())
    size = (spec["input_width"], spec["input_height"])
    settings = read_settings(args.repo)
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    log(f"[gpu] {gpu}; ONNX Runtime {ort.__version__}; {os.cpu_count()} cores; {len(blobs)} photos; model {size}")
    x1 = images.preprocess_bytes(blobs[0], *size)[0][None]
    model = args.repo / "yolov4_detector" / "1" / "model.onnx"
    inproc = {}
    ints = lambda text: [int(v) for v in text.split(",") if v]
    detector_batches = ints(args.detector_batches)
    for b in sorted({1, 8, *detector_batches}):
        inproc[b] = in_process(model, np.repeat(x1, b, axis=0), args.seconds)
        log(f"[gpu] in-process ORT CUDA b{b}: {inproc[b][0]:.1f} img/s, p50 {inproc[b][1]:.2f} ms")
    graphed = in_process_graphs(model, np.repeat(x1, 8, axis=0), args.seconds)
    log(f"[gpu] in-process ORT CUDA graphs b8 (the served detector's engine): {graphed[0]:.1f} img/s, "
        f"p50 {graphed[1]:.2f} ms")
    levels = ints(args.concurrency)
    where = ("one model: preprocess and NMS in the detector" if settings.preprocess_in == "detector" else
             "NMS in the detector" if settings.nms == "detector" else "three models")
    label = f"GPU preprocess ({instance_summary(settings)} instances, {where})"
    results = {label: served(args.repo, levels, tmp / "images.json", tmp, args.out, "gpu-pre", log,
                             detector_alone=True, images_per_request=args.images_per_request,
                             detector_batches=detector_batches)}

    def variant(name: str, **changes) -> Path:
        """A copy of the repository beside it, re-rendered with `changes` (the weights are copied, not rebuilt)."""
        path = args.repo.parent / name
        if path.exists():
            shutil.rmtree(path)
        copy_repository(args.repo, path)
        rerender(path, **changes)
        return path

    if args.cpu_preprocess:
        post = max(1, (os.cpu_count() or 4) // 4)
        cpu_repo = variant("repo-cpu-preprocess", preprocess_device="cpu", preprocess_instances=args.cpu_preprocess,
                           postprocess_instances=post)
        results[f"CPU preprocess ({args.cpu_preprocess}/{settings.detector_instances}/{post} instances)"] = served(
            cpu_repo, levels, tmp / "images.json", tmp, args.out, "cpu-pre", log)

    for i, also in enumerate(args.also):
        changes = {}
        for kv in also.split(","):
            key, value = kv.split("=", 1)
            changes[key] = int(value) if value.isdigit() else value
        also_levels = ints(args.also_concurrency) or levels[-2:]
        results[also] = served(variant(f"repo-also-{i}", **changes), also_levels, tmp / "images.json", tmp, args.out, f"also-{i}", log)

    best_inproc = max(graphed[0], *(v[0] for v in inproc.values()))
    lines = [f"# GPU host benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"`{' '.join(sys.argv)}`", "",
             f"GPU: {gpu}; ONNX Runtime {ort.__version__}; {os.cpu_count()} cores; {len(blobs)} photos (JPEG); "
             f"model input {size[0]}x{size[1]}, {len(spec.get('heads') or ())} heads; MPS "
             f"{'on' if args.mps else 'off'} for the served rows.", "",
             "| path | images/s | p50 ms | ratio to best in-process |", "|---|---|---|---|"]
    for b, (ips, p50) in inproc.items():
        lines.append(f"| in-process ORT CUDA, batch {b} | {ips:.1f} | {p50:.2f} | {ips / best_inproc:.2f} |")
    lines.append(f"| in-process ORT CUDA graphs (OrtDetector), batch 8 | {graphed[0]:.1f} | {graphed[1]:.2f} | "
                 f"{graphed[0] / best_inproc:.2f} |")
    for label, r in results.items():
        for row in r["rows"]:
            ips = float(row["Inferences/Second"])
            per = f", {row['images_per_request']} images per request" if row["images_per_request"] > 1 else ""
            lines.append(f"| served ensemble, {label}, concurrency {row['Concurrency']}{per} (GPU {row['gpu_util']:.0f}%) "
                         f"| {ips:.1f} | {int(row['p50 latency']) / 1000:.1f} | {ips / best_inproc:.2f} |")
        for b, (ips, p50) in r.get("detector_batches", {}).items():
            lines.append(f"| served detector alone, {label}, batch {b}, one request at a time | {ips:.1f} | {p50:.2f} | "
                         f"{ips / best_inproc:.2f} |")
        if "direct" in r:
            conc, ips, p50 = r["direct"]
            lines.append(f"| the detector model called directly (no ensemble step), concurrency {conc} | {ips:.1f} | "
                         f"{p50:.1f} | {ips / best_inproc:.2f} |")
        if "detector" in r:
            shm, ips = r["detector"]
            # perf_analyzer counts inferences as requests x batch size: already images/s
            nms = " (with its NMS, random image_meta)" if settings.nms == "detector" else ""
            lines.append(f"| served detector alone{nms}, batch 8, {shm} shared memory | {ips:.1f} | | "
                         f"{ips / best_inproc:.2f} |")
    cpu_tables = [(label, r) for label, r in results.items()]
    cpu_tables += [(f"{label}, {args.images_per_request} images per request", r["batched"])
                   for label, r in results.items() if "batched" in r]
    for label, r in cpu_tables:
        lines += ["", f"CPU ms per image, {label}, concurrency {r['best']['Concurrency']} "
                      f"({r['cpu_ips']:.0f} img/s during the window):", "", "| process | CPU ms per image |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in sorted(r["cpu"].items(), key=lambda kv: -kv[1])]
        server_side = sum(v for k, v in r["cpu"].items() if not k.startswith("perf_analyzer"))
        lines.append(f"| server side (tritonserver + every stub) | {server_side:.2f} |")
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    with (args.out / "gpu.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "concurrency", "images_per_request", "images_per_s", "p50_ms", "gpu_util"])
        for label, r in results.items():
            for row in r["rows"]:
                w.writerow([label, row["Concurrency"], row["images_per_request"], row["Inferences/Second"],
                            int(row["p50 latency"]) / 1000, row["gpu_util"]])
    log("\n".join(lines))


if __name__ == "__main__":
    main()
