#!/usr/bin/env python3
"""GPU host benchmark, in one run: the served ensemble (perf_analyzer, JPEG bytes in, concurrency sweep)
against the hardware's own ceilings on the same GPU, with the CPU cost of every server process and the
GPU time of every stage inside the stubs.

  python bench/gpu.py --repo R --photos DIR --out DIR [--concurrency 1,8,32,64,128] [--cpu-preprocess N]

R is a repository built with --detector-device gpu (GPU preprocess by default). Rows, all measured here:
- the ceilings (bench/ceilings.py): the JPEG decode alone (nvImageCodec: hardware decoder, CUDA, both; batch
  8..128) and the network alone with its input on the GPU (IO binding + CUDA graph, batch 8..128; FP32, and
  FP16 where the repository has model.fp16.onnx), each at its best. The ratio column is served images/s
  over min(decode ceiling, network ceiling in the precision the repository serves);
- stage times inside the stubs under load (YOLOTRITON_STAGE_TIMES, yolotriton/stage_times.py): GPU and CPU
  ms per image of decode, resize, input copy, network, candidates, copy to the host and NMS;
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
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from queue import Empty

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


import ceilings  # noqa: E402
import engines  # noqa: E402  (the conv bound and the torch engine alone)
import run  # noqa: E402  (perf_input_file, cpu_breakdown: the same measurement as make bench)
from yolotriton.runtime import stage_times  # noqa: E402
from yolotriton.build.repository import read_settings  # noqa: E402

MPS_NOTES: set[str] = set()
STAGES = ("decode", "resize", "input", "network", "candidates", "to_host", "nms", "outputs")


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
        before, times_before = model_stats(server), stage_times.read_sums(os.environ.get(stage_times.ENV, ""))
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
        time.sleep(1.2)  # the stubs write their sums at most once a second
        executes, n, stages = stage_times.summarize(times_before, stage_times.read_sums(os.environ.get(stage_times.ENV, "")))
        if n:
            for r in got:
                r["stages"] = {k: (g / n, c / n) for k, (g, c) in stages.items()}
                r["mean_batch"] = n / max(executes, 1)
            log(f"    stages, GPU / CPU ms per image (mean batch {n / max(executes, 1):.1f}): " + ", ".join(
                f"{k} {g / n:.3f}/{c / n:.3f}" for k, (g, c) in sorted(stages.items(), key=lambda kv: STAGES.index(kv[0])
                                                                       if kv[0] in STAGES else 99)))
        rows += got
    if not rows:
        raise RuntimeError("no concurrency level completed")
    return rows


def served(repo: Path, levels, images_json: Path, tmp: Path, out: Path, label: str, log, detector_alone=False,
           images_per_request: int = 1, detector_batches=()):
    from yolotriton.serve.server import TritonServer

    res = {}
    with TritonServer(repo, log_path=out / f"tritonserver-{label}.log") as server:
        MPS_NOTES.add(server.daemon.note)
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


def _decode_child(blobs, seconds, batches, queue) -> None:
    ceilings.decode_ceiling(blobs, seconds, batches, on_row=queue.put)
    queue.put(None)
    queue.close()
    queue.join_thread()
    os._exit(0)  # skip nvImageCodec's teardown


def decode_in_child(blobs, seconds: float, batches) -> list[dict]:
    """The decode ceiling in a process of its own, its rows sent as measured: in one process on the H200
    (2026-12-04) nvImageCodec's decode after torch had run, and ONNX Runtime's CUDA sessions made after
    nvImageCodec's decoder, crashed (SIGSEGV), and a decode-only process crashed (-11) after its last row."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_decode_child, args=(blobs, seconds, batches, queue))
    child.start()
    rows = []
    try:
        while True:
            try:
                row = queue.get(timeout=2)
            except Empty:
                if not child.is_alive():
                    print(f"  decode ceiling: its process ended with {child.exitcode} after {len(rows)} rows",
                          flush=True)
                    return rows
                continue
            if row is None:
                return rows
            rows.append(row)
    finally:
        child.join(30)


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
                    help="e.g. 1,2,3,8: the served detector alone (one request at a time) at each batch size")
    ap.add_argument("--decode-batches", default="8,16,32,64,128", help="batch sizes for the decode ceiling")
    ap.add_argument("--network-batches", default="8,16,32,64,128", help="batch sizes for the network ceiling")
    ap.add_argument("--ceiling-seconds", type=float, default=1.5, help="time per ceiling measurement")
    ap.add_argument("--also", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="also serve a re-rendered copy with these settings (e.g. nms=postprocess); repeatable")
    ap.add_argument("--also-concurrency", default="", help="levels for the --also variants (default: the top two)")
    ap.add_argument("--mps", choices=("auto", "off"), default="auto",
                    help="auto: each server under its own NVIDIA MPS daemon, as the tritonserver wrapper serves on a "
                         "GPU host (yolotriton/mps.py); off: without")
    args = ap.parse_args()
    os.environ["YOLOTRITON_MPS"] = args.mps
    os.environ.setdefault(stage_times.ENV, tempfile.mkdtemp(prefix="stage-times-"))
    report(args)


def report(args):
    log = lambda *a: print(*a, flush=True)
    import onnxruntime as ort

    from yolotriton.build.pipeline import copy_repository, instance_summary, rerender
    from yolotriton.build.repository import spec_path

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
    ints = lambda text: [int(v) for v in text.split(",") if v]
    detector_batches = ints(args.detector_batches)
    folder = args.repo / "yolov4_detector" / "1"
    log("[gpu] ceilings: each stage alone at its best")
    network = {}
    for precision, name in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx")):
        if (folder / name).is_file():
            network[precision] = ceilings.network_ceiling(str(folder / name), ints(args.network_batches),
                                                          seconds=args.ceiling_seconds, log=log, label=f" {precision}")
    log("[gpu] the hardware bound: the network's convolutions alone, cuDNN's best algorithms, FP16 NHWC (torch)")
    bound = []
    for b in ints(args.network_batches):
        try:
            bound.append({"batch": b, **engines.conv_bound(str(folder / "model.onnx"), b)})
            log(f"  conv bound batch {b}: {bound[-1]['images_per_s']:.0f} img/s ({bound[-1]['tflops']:.0f} TFLOPS)")
        except Exception as e:  # noqa: BLE001 -- no torch here: the bound is missing, and the report says so
            log(f"  conv bound batch {b}: not measured ({type(e).__name__}: {e})")
    bound_best = ceilings.best(bound)
    if (folder / "candidates.onnx").is_file():
        network["torch"] = []
        for b in ints(args.network_batches):
            try:
                r = engines.torch_rate(folder, b, half=settings.detector_precision == "fp16")
                network["torch"].append({"batch": b, **r})
                log(f"  torch engine {settings.detector_precision} + candidates, batch {b}: {r['images_per_s']:.0f} "
                    f"img/s (built in {r['build_s']} s)")
            except Exception as e:  # noqa: BLE001
                log(f"  torch engine batch {b}: not measured ({type(e).__name__}: {str(e)[:200]})")
    engine = {}
    if (folder / "candidates.onnx").is_file():  # what the served engine adds on the GPU: the heads' decode + top-K
        served_model = folder / ("model.fp16.onnx" if settings.detector_precision == "fp16" else "model.onnx")
        engine = {r["batch"]: r for r in ceilings.network_ceiling(
            str(served_model), [b for b in (8, 64) if b in ints(args.network_batches)],
            candidates=str(folder / "candidates.onnx"), seconds=args.ceiling_seconds, log=log,
            label=f" {settings.detector_precision}")}
    # the decode in a process of its own: on the H200 (2026-12-04) nvImageCodec's decode after torch had run, and
    # ONNX Runtime's CUDA sessions made after nvImageCodec's decoder, crashed the process (SIGSEGV)
    decode_rows = decode_in_child(blobs, args.ceiling_seconds, ints(args.decode_batches)) \
        if ints(args.decode_batches) else []
    decode_best = ceilings.best(decode_rows)
    served_engine = "torch" if settings.engine == "torch" and network.get("torch") else settings.detector_precision
    network_best = ceilings.best(network.get(served_engine, []))
    ceiling = min(r["images_per_s"] for r in (decode_best, network_best) if r) if (decode_best or network_best) \
        else float("nan")
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

    best_inproc = ceiling  # every ratio below: served / min(decode ceiling, network ceiling)
    lines = [f"# GPU host benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"`{' '.join(sys.argv)}`", "",
             f"GPU: {gpu}; ONNX Runtime {ort.__version__}; {os.cpu_count()} cores; {len(blobs)} photos (JPEG); "
             f"model input {size[0]}x{size[1]}, {len(spec.get('heads') or ())} heads; served precision "
             f"{settings.detector_precision}, max batch {settings.max_batch_size}; MPS for the served rows: "
             f"{'; '.join(sorted(MPS_NOTES))}.", "",
             f"Ceiling = min(decode alone at its best, network alone at its best on the served engine, "
             f"{settings.engine} {settings.detector_precision}) = **{ceiling:.0f} img/s**. The hardware bound = the "
             f"network's convolutions alone, each at cuDNN's best algorithm, FP16 NHWC, summed (torch "
             f"{engines.torch_version()}): **{bound_best['images_per_s'] if bound_best else float('nan'):.0f} img/s**"
             f" at batch {bound_best['batch'] if bound_best else '-'}.", "",
             "| path | images/s | p50 ms | p99 ms | ratio to the ceiling | ratio to the conv bound |", "|---|---|---|---|---|---|"]
    of_bound = lambda ips: f"{ips / bound_best['images_per_s']:.2f}" if bound_best else "-"
    for r in bound:
        lines.append(f"| the network's convolutions alone (cuDNN best, FP16 NHWC), batch {r['batch']} | "
                     f"{r['images_per_s']:.0f} | | | | {of_bound(r['images_per_s'])} |")
    for r in decode_rows:
        star = " **(best)**" if r is decode_best else ""
        lines.append(f"| decode alone, nvImageCodec {r['backend']}, batch {r['batch']}{star} | {r['images_per_s']:.0f} | | | "
                     f"{r['images_per_s'] / ceiling:.2f} | |")
    for precision, rows_ in network.items():
        top = ceilings.best(rows_)
        for r in rows_:
            star = " **(best)**" if r is top else ""
            what = (f"network + candidates alone, torch engine {settings.detector_precision} (inductor, CUDA graph)"
                    if precision == "torch" else f"network alone, ONNX Runtime {precision}, IO binding + CUDA graph")
            lines.append(f"| {what}, input on the GPU, batch {r['batch']}{star} "
                         f"| {r['images_per_s']:.0f} | | | {r['images_per_s'] / ceiling:.2f} | {of_bound(r['images_per_s'])} |")
    for b, r in engine.items():
        lines.append(f"| network {settings.detector_precision} + candidates.onnx on ONNX Runtime, batch {b} "
                     f"| {r['images_per_s']:.0f} | | | {r['images_per_s'] / ceiling:.2f} | {of_bound(r['images_per_s'])} |")
    stage_rows = []
    for label, r in results.items():
        for row in r["rows"]:
            ips = float(row["Inferences/Second"])
            per = f", {row['images_per_request']} images per request" if row["images_per_request"] > 1 else ""
            lines.append(f"| served ensemble, {label}, concurrency {row['Concurrency']}{per} (GPU {row['gpu_util']:.0f}%) "
                         f"| {ips:.1f} | {int(row['p50 latency']) / 1000:.1f} | {int(row['p99 latency']) / 1000:.1f} | "
                         f"{ips / best_inproc:.2f} | {of_bound(ips)} |")
            if row.get("stages"):
                stage_rows.append((f"{label}, concurrency {row['Concurrency']}{per}", row))
        for b, (ips, p50) in r.get("detector_batches", {}).items():
            lines.append(f"| served detector alone, {label}, batch {b}, one request at a time | {ips:.1f} | {p50:.2f} | | "
                         f"{ips / best_inproc:.2f} | {of_bound(ips)} |")
        if "direct" in r:
            conc, ips, p50 = r["direct"]
            lines.append(f"| the detector model called directly (no ensemble step), concurrency {conc} | {ips:.1f} | "
                         f"{p50:.1f} | | {ips / best_inproc:.2f} | {of_bound(ips)} |")
        if "detector" in r:
            shm, ips = r["detector"]
            # perf_analyzer counts inferences as requests x batch size: already images/s
            nms = " (with its NMS, random image_meta)" if settings.nms == "detector" else ""
            lines.append(f"| served detector alone{nms}, batch 8, {shm} shared memory | {ips:.1f} | | | "
                         f"{ips / best_inproc:.2f} | {of_bound(ips)} |")
    if stage_rows:
        names = [k for k in STAGES if any(k in r["stages"] for _, r in stage_rows)]
        lines += ["", "Stage times inside the stubs under load, GPU ms / CPU ms per image (CUDA events on the "
                      "instance's stream; CPU = the stub thread's CPU time):", "",
                  "| served | mean batch | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for name, r in stage_rows:
            lines.append(f"| {name} | {r['mean_batch']:.1f} | " + " | ".join(
                "{:.3f} / {:.3f}".format(*r["stages"][k]) if k in r["stages"] else "" for k in names) + " |")
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
        w.writerow(["variant", "concurrency", "images_per_request", "images_per_s", "p50_ms", "p99_ms", "gpu_util"])
        for label, r in results.items():
            for row in r["rows"]:
                w.writerow([label, row["Concurrency"], row["images_per_request"], row["Inferences/Second"],
                            int(row["p50 latency"]) / 1000, int(row["p99 latency"]) / 1000, row["gpu_util"]])
    log("\n".join(lines))


if __name__ == "__main__":
    main()
