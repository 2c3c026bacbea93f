#!/usr/bin/env python3
"""`make bench`: the served ensemble (perf_analyzer, real JPEGs, concurrency sweep) against in-process
baselines on the same photos, in one run. Writes bench/results/: summary.md, CSVs, PNG plots.

  .venv/bin/python bench/run.py [--repository model_repository] [--concurrency 1,2,4,6,8] [--quick]

Baselines (all in this process, all cores): Keras eager, tf.function, tf.function + XLA, the ONNX
Runtime detector alone (batch 1 and 4), the whole pipeline run sequentially (decode+resize -> ORT ->
decode+NMS, the same code the served models run), and OpenCV DNN on the darknet cfg+weights (decode,
blob, forward, NMS: what a CPU user would otherwise run). Throughputs are images per second.

Also measured in the same run: this machine's capacity for the served pipeline. One single-thread ONNX
Runtime session per core, all running at once, gives the most detector work the cores can do (single-
thread kernels are the most efficient use of a core; the served detector runs that way); adding the
measured single-thread preprocess and postprocess CPU time per image gives the highest throughput any
server could reach here, and so the highest each served/in-process ratio can be. A target above that
ceiling cannot be met on this machine by serving better, only by doing less arithmetic per image.
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from procs import cpu_seconds, status_kb, stub_pids, tree  # noqa: E402

TARGETS = [  # (numerator, denominator, minimum ratio), from the benchmark issue
    ("served ensemble", "ORT detector alone b1", 1.0),
    ("served ensemble", "in-process pipeline (sequential)", 1.2),
    ("served ensemble", "OpenCV DNN (darknet)", 2.5),
    ("served detector b1", "best TensorFlow b1", 1.2),
    ("served detector b4", "best TensorFlow b4", 1.2),
    ("served detector b1", "Keras eager b1", 2.0),
]


def photos() -> list[Path]:
    from yolotriton.build.assets import default_model

    shared = ROOT.parent / "shared" / "darknet"
    return [shared / f"{n}.jpg" for n in ("dog", "person", "horses", "eagle", "giraffe", "scream")] + \
        list(default_model().samples)


def rate(fn, images_per_call: int, seconds: float, min_calls: int = 5) -> tuple[float, list[float]]:
    """Images/s at the median call time (after one warm-up call), and the per-call latencies in ms.

    The median, not the mean: this machine stalls now and then for tens of ms, and a stall during a
    baseline would flatter the server. perf_analyzer's served numbers keep their stalls, so every
    ratio errs against the server."""
    fn()
    lat, start = [], time.perf_counter()
    while len(lat) < min_calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t) * 1000)
    return images_per_call * 1000 / statistics.median(lat), lat


def in_process(repo: Path, blobs: list[bytes], seconds: float, log) -> dict[str, dict]:
    import cv2
    import onnxruntime as ort
    import tensorflow as tf

    from yolotriton.build.assets import default_model
    from yolotriton.build.darknet import import_darknet
    from yolotriton.serve.local import LocalPipeline

    res: dict[str, dict] = {}
    pipe = LocalPipeline(repo)
    batch1, _ = pipe.preprocess(blobs[:1])
    batch4, _ = pipe.preprocess((blobs * 4)[:4])

    def record(name, fn, n):
        ips, lat = rate(fn, n, seconds)
        res[name] = {"ips": ips, "p50_ms": statistics.median(lat), "calls": len(lat)}
        log(f"  {name:<36} {ips:7.2f} img/s   p50 {statistics.median(lat):8.1f} ms")

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(repo / "yolov4_detector" / "1" / "model.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    record("ORT detector alone b1", lambda: sess.run(None, {"images": batch1}), 1)
    record("ORT detector alone b4", lambda: sess.run(None, {"images": batch4}), 4)
    it = iter(range(10**9))
    record("in-process pipeline (sequential)", lambda: pipe([blobs[next(it) % len(blobs)]]), 1)

    dm = default_model()
    net = cv2.dnn.readNetFromDarknet(str(dm.cfg), str(dm.weights))
    names = net.getUnconnectedOutLayersNames()

    def opencv_once():
        data = blobs[next(it) % len(blobs)]
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        net.setInput(cv2.dnn.blobFromImage(img, 1 / 255.0, (pipe.width, pipe.height), swapRB=True, crop=False))
        rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in net.forward(names)])
        ri, ci = np.nonzero(rows[:, 5:] > 0.25)
        xywh = rows[ri, :4] * [img.shape[1], img.shape[0], img.shape[1], img.shape[0]]
        cv2.dnn.NMSBoxesBatched(xywh, rows[ri, 5 + ci], ci, 0.25, 0.45)

    record("OpenCV DNN (darknet)", opencv_once, 1)

    det = import_darknet(dm.cfg, dm.weights, dm.names)
    model = det.model
    fn = tf.function(lambda x: model(x, training=False))
    xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
    for b, x in ((1, batch1), (4, batch4)):
        t = tf.constant(x)
        record(f"Keras eager b{b}", lambda: [o.numpy() for o in model(t, training=False)], b)
        record(f"tf.function b{b}", lambda: [o.numpy() for o in fn(t)], b)
        record(f"tf.function+XLA b{b}", lambda: [o.numpy() for o in xla(t)], b)
        best = max((f"tf.function b{b}", f"tf.function+XLA b{b}"), key=lambda k: res[k]["ips"])
        res[f"best TensorFlow b{b}"] = {**res[best], "is": best}
    return res


def capacity(repo: Path, blobs: list[bytes], seconds: float, log) -> dict[str, float]:
    """Ceiling for any server on this machine (see the module docstring)."""
    import threading

    import cv2
    import onnxruntime as ort

    from yolotriton.runtime import images
    from yolotriton.serve.local import LocalPipeline

    cores = os.cpu_count() or 1
    pipe = LocalPipeline(repo, threads=1)
    batch, meta = pipe.preprocess(blobs[:1])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = [ort.InferenceSession(str(repo / "yolov4_detector" / "1" / "model.onnx"), opts,
                                     providers=["CPUExecutionProvider"]) for _ in range(cores)]
    for sess in sessions:
        sess.run(None, {"images": batch})
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    def loop(i):  # ONNX Runtime releases the GIL while it runs, so these run in parallel
        while time.perf_counter() < stop:
            t = time.perf_counter()
            sessions[i].run(None, {"images": batch})
            lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(cores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    detector_ips = cores / statistics.median(lat)  # median, as for the baselines: stalls don't lower the ceiling

    cv2.setNumThreads(1)  # as in the served models
    out = np.empty((pipe.height, pipe.width, 3), np.float32)
    outputs = pipe.detect_tensors(batch)
    pre, post = [], []
    for _ in range(max(3, int(seconds * 10 / len(blobs)))):
        for data in blobs:
            t = time.perf_counter()
            images.preprocess_bytes(data, pipe.width, pipe.height, pipe.mode, pipe.max_pixels, out=out)
            pre.append(time.perf_counter() - t)
        t = time.perf_counter()
        pipe.postprocess(outputs, meta)
        post.append(time.perf_counter() - t)
    cv2.setNumThreads(cores)
    pre_ms = 1000 * statistics.mean(statistics.median(pre[i::len(blobs)]) for i in range(len(blobs)))
    post_ms = 1000 * statistics.median(post)
    served_ips = 1 / (1 / detector_ips + (pre_ms + post_ms) / 1000 / cores)
    log(f"  detector, {cores} single-thread sessions at once: {detector_ips:6.2f} img/s; preprocess {pre_ms:.2f} ms "
        f"(mean over the photos of each one's median), postprocess {post_ms:.2f} ms per image on one core")
    log(f"  => ceiling for a served pipeline on this machine: {served_ips:.2f} img/s")
    return {"detector_ips": detector_ips, "preprocess_ms": pre_ms, "postprocess_ms": post_ms,
            "served_ips": served_ips, "cores": cores}


def perf_input_file(blobs: list[bytes], path: Path) -> None:
    """perf_analyzer --input-data JSON: BYTES elements are base64 of a 4-byte LE length + the bytes."""
    data = [{"IMAGE": {"content": {"b64": base64.b64encode(struct.pack("<I", len(b)) + b).decode()}, "shape": [1]}}
            for b in blobs]
    path.write_text(json.dumps({"data": data}))


def perf_analyzer_command(server, model: str, args: list[str]) -> list[str]:
    """perf_analyzer against `model` on `server` over gRPC, with `args` after: $PERF_ANALYZER, else the
    venv's (make), else the one on PATH (the GPU host's perf-analyzer wheel)."""
    import shutil

    venv = ROOT / ".venv" / "bin" / "perf_analyzer"
    exe = os.environ.get("PERF_ANALYZER") or (str(venv) if venv.exists() else shutil.which("perf_analyzer"))
    if not exe:
        raise RuntimeError("perf_analyzer not found: run make, or install the perf-analyzer wheel")
    return [exe, "-m", model, "-u", server.grpc_url, "-i", "grpc", *args]


def perf_analyzer(server, model: str, out_csv: Path, args: list[str], log) -> list[dict]:
    cmd = perf_analyzer_command(server, model, ["--measurement-interval", "4000", "--stability-percentage", "25",
                                                "--max-trials", "6", "-f", str(out_csv), "--verbose-csv", *args])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    rows = list(csv.DictReader(out_csv.open()))
    for r in rows:
        log(f"  {model} concurrency {r['Concurrency']:>2}: {float(r['Inferences/Second']):7.2f} infer/s, "
            f"p50 {int(r['p50 latency']) / 1000:7.1f} ms, p99 {int(r['p99 latency']) / 1000:7.1f} ms")
    return rows


def tree_peak_rss_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of a process and its children (tritonserver and its Python stubs)."""
    return sum(status_kb(p, "VmHWM") or 0 for p in tree(pid)) / 1024


def process_cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds (user+system) of tritonserver and of each of its stubs (by model)."""
    names = {server_pid: "tritonserver (gRPC, ensemble scheduling)",
             **{p: f"{model} (stubs)" for p, model in stub_pids(server_pid).items()}}
    out: dict[str, float] = {}
    for pid, name in names.items():
        cpu = cpu_seconds(pid)
        if cpu is not None:
            out[name] = out.get(name, 0.0) + cpu
    return out


def cpu_breakdown(server, concurrency: int, images_json: Path, log,
                  window_ms: int = 7000, images_per_request: int = 1) -> tuple[float, dict[str, float]]:
    """Run the ensemble at `concurrency` for a while and split the CPU time per image by process."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url.split("://")[-1])

    def served():
        stats = client.get_inference_statistics("yolov4", as_json=True)["model_stats"][0]["inference_stats"]
        return int(stats["success"].get("count", 0))

    cmd = perf_analyzer_command(server, "yolov4", [
        "--input-data", str(images_json), "--concurrency-range", f"{concurrency}:{concurrency}",
        "-b", str(images_per_request),
        "--measurement-interval", str(window_ms), "--max-trials", "3", "--stability-percentage", "100"])
    n0, before, t0 = served(), process_cpu_seconds(server.process.pid), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    # wait4 reaps perf_analyzer with its exact CPU usage (sampling /proc could miss a short run).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    after = process_cpu_seconds(server.process.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({' '.join(cmd)}):\n{output.decode(errors='replace')[-3000:]}")
    after["perf_analyzer (load generator)"] = usage.ru_utime + usage.ru_stime
    n, seconds = (served() - n0) * images_per_request, time.perf_counter() - t0  # Triton counts requests
    per_image = {k: 1000 * (v - before.get(k, 0.0)) / max(n, 1) for k, v in after.items()}
    log(f"  CPU per image at concurrency {concurrency} ({n} images, {n / seconds:.2f} img/s):")
    for k, v in sorted(per_image.items(), key=lambda kv: -kv[1]):
        log(f"    {k:<44} {v:7.2f} ms")
    return n / seconds, per_image


def plots(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = [int(r["Concurrency"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(conc, [float(r["Inferences/Second"]) for r in rows], "o-")
    ax.set(xlabel="concurrency (requests in flight)", ylabel="images / s", title="Served ensemble throughput (JPEG in)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in ("p50", "p95", "p99"):
        ax.plot(conc, [int(r[f"{p} latency"]) / 1000 for r in rows], "o-", label=p)
    ax.set(xlabel="concurrency (requests in flight)", ylabel="latency (ms)", title="Served ensemble latency")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--concurrency", default="1,2,4,6,8")
    ap.add_argument("--seconds", type=float, default=8.0, help="time per in-process baseline")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--quick", action="store_true", help="short run (for smoke tests): fewer levels and seconds")
    args = ap.parse_args()
    if args.quick:
        args.concurrency, args.seconds = "1,4", 2.0
    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(*a, flush=True)
    from yolotriton.build.repository import spec_path
    from yolotriton.serve.server import TritonServer

    imgs = photos()
    blobs = [p.read_bytes() for p in imgs]
    log(f"[bench] {len(blobs)} photos; in-process baselines ({args.seconds:.0f}s each)")
    base = in_process(args.repository, blobs, args.seconds, log)
    log("[bench] capacity of this machine (the ceiling for any server)")
    cap = capacity(args.repository, blobs, args.seconds, log)

    tmp = Path(tempfile.mkdtemp())
    perf_input_file(blobs, tmp / "images.json")
    served: dict[str, dict] = {}
    with TritonServer(args.repository, log_path=args.out / "tritonserver.log") as server:
        log("[bench] served ensemble, perf_analyzer, JPEG bytes in")
        levels = [int(c) for c in args.concurrency.split(",")]
        rows = []
        for c in levels:  # one level per call: a level that fails to stabilise still reports
            rows += perf_analyzer(server, "yolov4", tmp / f"c{c}.csv",
                                  ["--input-data", str(tmp / "images.json"), "--concurrency-range", f"{c}:{c}"], log)
        best = max(rows, key=lambda r: float(r["Inferences/Second"]))
        served["served ensemble"] = {"ips": float(best["Inferences/Second"]), "concurrency": int(best["Concurrency"]),
                                     "p50_ms": int(best["p50 latency"]) / 1000}
        log(f"[bench] where the CPU goes, served ensemble at concurrency {served['served ensemble']['concurrency']}")
        _, per_image = cpu_breakdown(server, served["served ensemble"]["concurrency"], tmp / "images.json", log)
        # The in-process TensorFlow paths get their input tensor for free; over gRPC a 2 MB FP32 tensor
        # per image costs both perf_analyzer and the server CPU on these same cores. System shared
        # memory hands the tensor over as the in-process calls do.
        log("[bench] served detector alone (FP32 input, random data, system shared memory)")
        for b in (1, 4):
            drows = perf_analyzer(server, "yolov4_detector", tmp / f"det_b{b}.csv",
                                  ["-b", str(b), "--input-data", "random", "--shared-memory", "system",
                                   "--concurrency-range", "2:2"], log)
            served[f"served detector b{b}"] = {"ips": float(drows[0]["Inferences/Second"]), "concurrency": 2,
                                               "p50_ms": int(drows[0]["p50 latency"]) / 1000}
        peak = tree_peak_rss_mb(server.process.pid)
    with (args.out / "served_ensemble.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    allres = {**base, **served}
    with (args.out / "throughput.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "images_per_s", "p50_ms"])
        for k, v in allres.items():
            w.writerow([k, f"{v['ips']:.3f}", f"{v['p50_ms']:.2f}"])
    plots(rows, args.out)

    input_px = json.loads(spec_path(args.repository).read_text())["input_width"]
    lines = [f"# Benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, `{' '.join(sys.argv)}`)", "",
             f"Model: {args.repository.name} (input {input_px} px), "
             f"{len(blobs)} photos. Server peak RSS (tritonserver + stubs): {peak:.0f} MB.", "",
             "In-process rows are images/s at the median call time (stalls excluded, in their favour); served rows "
             "are perf_analyzer's throughput (stalls included).", "",
             "| path | images/s | p50 ms |", "|---|---|---|"]
    for k, v in allres.items():
        extra = f" (concurrency {v['concurrency']})" if "concurrency" in v else (f" ({v['is']})" if "is" in v else "")
        lines.append(f"| {k}{extra} | {v['ips']:.2f} | {v['p50_ms']:.1f} |")
    lines += ["", f"Capacity of this machine, measured in the same run: {cap['cores']} single-thread detector sessions "
              f"at once {cap['detector_ips']:.2f} img/s; preprocess {cap['preprocess_ms']:.2f} ms and postprocess "
              f"{cap['postprocess_ms']:.2f} ms of one core per image; so no server can exceed "
              f"**{cap['served_ips']:.2f} img/s** for the ensemble or {cap['detector_ips']:.2f} img/s for the "
              f"detector here. \"ceiling\" is the ratio a server at that ceiling would reach.", "",
              "| target | ratio | needed | ceiling | met |", "|---|---|---|---|---|"]
    for num, den, need in TARGETS:
        r = allres[num]["ips"] / allres[den]["ips"]
        top = (cap["served_ips"] if num == "served ensemble" else cap["detector_ips"]) / allres[den]["ips"]
        met = "yes" if r >= need else ("**no**" if top >= need else "**no** (above the ceiling)")
        lines.append(f"| {num} / {den} | {r:.2f} | ≥ {need} | {top:.2f} | {met} |")
    lines += ["", f"CPU time per image in the served ensemble (concurrency {served['served ensemble']['concurrency']}, "
              "all processes on these same cores, from /proc):", "", "| process | CPU ms per image |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in sorted(per_image.items(), key=lambda kv: -kv[1])]
    lines += [f"| total | {sum(per_image.values()):.2f} |"]
    lines += ["", "Served ensemble by concurrency:", "", "| concurrency | images/s | p50 ms | p95 ms | p99 ms |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['Concurrency']} | {float(r['Inferences/Second']):.2f} | {int(r['p50 latency']) / 1000:.1f} | "
                     f"{int(r['p95 latency']) / 1000:.1f} | {int(r['p99 latency']) / 1000:.1f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    log("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
