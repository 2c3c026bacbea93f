#!/usr/bin/env python3
"""`make soak`: load, mixed bad input, and faults against the real embedded server; a summary table.

  .venv/bin/python bench/soak.py [--repository model_repository] [--seconds 60] [--concurrency 16]

Phases (all traffic on 127.0.0.1, every loop bounded in time and count):
  load      concurrency 16 for --seconds; ~10% bad requests of seven kinds. Every good answer is
            checked against the photo's expected detections, every bad one must be INVALID_ARGUMENT
            naming the problem. Server RSS after warm-up vs at the end; Python stub PIDs before/after.
  restart   the client's retry path while the server is stopped mid-load and started again on the
            same ports: the stream reports exactly which request indices failed (expected: none).
  stub-kill one detector stub is killed with SIGKILL mid-load: what Triton does, and what the
            client raises (ModelFailure), measured.
Exit status 1 if load or restart saw an unexpected result.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from procs import status_kb, stub_pids, tree  # noqa: E402
from run import photos  # noqa: E402

from client import AsyncYoloClient, YoloClientError  # noqa: E402
from yolotriton.serve.server import TritonServer  # noqa: E402

OUTPUTS = ("num_detections", "boxes", "scores", "classes")


def bad_requests(max_batch: int) -> dict[str, tuple]:
    """kind -> (input name, numpy data, triton dtype, expected message fragment)."""
    good = (ROOT.parent / "shared" / "darknet" / "dog.jpg").read_bytes()
    big = cv2.imencode(".jpg", np.full((10_000, 10_000, 3), 127, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes()
    obj = lambda b: np.array([[b]], dtype=object)
    return {
        "garbage": ("IMAGE", obj(os.urandom(2000)), "BYTES", "not a JPEG, PNG or BMP"),
        "truncated JPEG": ("IMAGE", obj(good[: len(good) // 2]), "BYTES", "truncated JPEG"),
        "0 bytes": ("IMAGE", obj(b""), "BYTES", "empty image"),
        "100 MP image": ("IMAGE", obj(big), "BYTES", "100,000,000 pixels, above the limit"),
        "wrong dtype": ("IMAGE", np.zeros((1, 1), np.float32), "FP32", "data-type"),
        "wrong shape": ("IMAGE", np.array([[good, good]], dtype=object), "BYTES", "shape"),
        "batch above max": ("IMAGE", np.array([[good]] * (max_batch + 1), dtype=object), "BYTES", "batch-size must be <="),
    }


def send(client, name, data, dtype):
    inp = grpcclient.InferInput(name, list(data.shape), dtype)
    inp.set_data_from_numpy(data)
    return client.infer("yolov4", [inp])


def rss_mb(pid: int) -> float:
    return sum(status_kb(p, "VmRSS") or 0 for p in tree(pid)) / 1024


def rss_by_process(pid: int) -> dict[str, float]:
    """RSS in MB of tritonserver and each Python stub (named by model), to see which one grows."""
    out: dict[str, float] = {}
    for p, name in {pid: "tritonserver", **stub_pids(pid)}.items():
        kb = status_kb(p, "VmRSS")
        if kb is not None:
            out[name] = out.get(name, 0.0) + kb / 1024
    return out


def load_phase(server, seconds: float, concurrency: int, expected: dict, bad: dict, log) -> dict:
    blobs = list(expected)
    kinds = sorted(bad)
    stats = Counter()
    lat: list[float] = []
    problems: list[str] = []
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    max_requests = int(seconds * 200)  # a hard bound besides time

    def worker(w: int):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        i = w
        while time.monotonic() < deadline and stats["requests"] < max_requests:
            i += concurrency
            is_bad = i % 10 == 0
            t = time.perf_counter()
            try:
                if is_bad:
                    kind = kinds[(i // 10) % len(kinds)]
                    name, data, dtype, msg = bad[kind]
                    try:
                        send(client, name, data, dtype)
                        outcome = f"bad accepted: {kind}"
                    except InferenceServerException as e:
                        ok = "INVALID_ARGUMENT" in str(e.status()) and msg in e.message()
                        outcome = f"bad rejected: {kind}" if ok else f"bad wrong error: {kind}: {e.status()} {e.message()[:120]}"
                else:
                    blob = blobs[i % len(blobs)]
                    res = send(client, "IMAGE", np.array([[blob]], dtype=object), "BYTES")
                    got = tuple(res.as_numpy(k) for k in OUTPUTS)
                    same = all(np.allclose(a, b, atol=1e-3) for a, b in zip(got, expected[blob]))
                    outcome = "good ok" if same else "good WRONG detections"
            except InferenceServerException as e:
                outcome = f"good failed: {e.status()} {e.message()[:120]}"
            with lock:
                stats["requests"] += 1
                stats[outcome] += 1
                if not is_bad:
                    lat.append((time.perf_counter() - t) * 1000)
                if "WRONG" in outcome or "failed" in outcome or "accepted" in outcome or "wrong error" in outcome:
                    problems.append(outcome)

    samples = []

    def sampler():  # RSS every 10 s, to tell a plateau from a leak
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - t0, rss_mb(server.process.pid)))
            time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    th.join()
    return {"stats": stats, "lat": lat, "problems": problems, "rss_samples": samples}


def restart_phase(server, blobs, log) -> dict:
    """Stream requests through the async client while the server is stopped and started again."""
    n = 120
    images = [blobs[i % len(blobs)] for i in range(n)]
    failed, done = {}, 0
    restart_at = {}

    def restarter():
        time.sleep(3)
        restart_at["stop"] = time.monotonic()
        server.stop()
        time.sleep(2)
        server.start()
        restart_at["up"] = time.monotonic()

    async def run():
        nonlocal done
        async with AsyncYoloClient(server.grpc_url, retries=8, backoff=0.25, timeout=60) as c:
            async for i, r in c.stream(images, concurrency=8):
                done += 1
                if isinstance(r, Exception):
                    failed[i] = f"{type(r).__name__}: {str(r)[:100]}"

    th = threading.Thread(target=restarter)
    t = time.monotonic()
    th.start()
    asyncio.run(run())
    th.join()
    return {"requests": n, "completed": done, "failed": failed, "seconds": time.monotonic() - t,
            "downtime": restart_at.get("up", 0) - restart_at.get("stop", 0)}


def stub_kill_phase(server, blobs, log) -> dict:
    from client import YoloClient

    stubs = stub_pids(server.process.pid)
    victim = next((p for p, m in stubs.items() if "detector" in m), None)
    outcomes = Counter()
    examples = {}
    client = YoloClient(server.grpc_url, retries=0, timeout=30)
    client.info  # noqa: B018  (read the configs before the fault)
    for i in range(40):
        if i == 5 and victim:
            os.kill(victim, signal.SIGKILL)
        try:
            client.detect(blobs[i % len(blobs)])
            outcomes["ok"] += 1
        except YoloClientError as e:
            outcomes[type(e).__name__] += 1
            examples.setdefault(type(e).__name__, str(e)[:160])
    after = stub_pids(server.process.pid)
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    return {"victim": (victim, stubs.get(victim)), "outcomes": outcomes, "examples": examples,
            "model_ready": {m: raw.is_model_ready(m) for m in ("yolov4", "yolov4_detector")},
            "server_alive": server.process.poll() is None and server.ready(),
            "detector_stubs_after": sorted(m for m in after.values() if "detector" in m)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=90,
                    help="seconds at full load before the RSS baseline: measured here, RSS plateaus after ~90 s "
                         "(Python-backend shared-memory pools and allocator arenas grow to the in-flight peak)")
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    log = lambda *a: print(*a, flush=True)
    blobs = [p.read_bytes() for p in photos()]
    server = TritonServer(args.repository, log_path=Path("/tmp") / f"soak-tritonserver-{os.getpid()}.log").start()
    failed = False
    try:
        c = grpcclient.InferenceServerClient(server.grpc_url)
        max_batch = c.get_model_config("yolov4").config.max_batch_size
        expected = {}
        for b in blobs:
            res = send(c, "IMAGE", np.array([[b]], dtype=object), "BYTES")
            expected[b] = tuple(res.as_numpy(k) for k in OUTPUTS)
        bad = bad_requests(max_batch)
        log(f"[soak] warm-up {args.warmup:.0f}s at concurrency {args.concurrency}")
        load_phase(server, args.warmup, args.concurrency, expected, bad, log)
        rss0, stubs0, by0 = rss_mb(server.process.pid), stub_pids(server.process.pid), rss_by_process(server.process.pid)
        log(f"[soak] load {args.seconds:.0f}s at concurrency {args.concurrency}, ~10% bad input of {len(bad)} kinds")
        t = time.monotonic()
        load = load_phase(server, args.seconds, args.concurrency, expected, bad, log)
        wall = time.monotonic() - t
        rss1, stubs1, by1 = rss_mb(server.process.pid), stub_pids(server.process.pid), rss_by_process(server.process.pid)
        growth = 100 * (rss1 - rss0) / rss0
        st, lat = load["stats"], sorted(load["lat"])
        pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
        rows = [("requests", st["requests"]), ("good ok", st["good ok"]),
                ("good wrong/failed", sum(v for k, v in st.items() if k.startswith("good") and k != "good ok"))]
        rows += [(k, v) for k, v in sorted(st.items()) if k.startswith("bad")]
        rows += [("throughput (req/s)", f"{st['requests'] / wall:.1f}"),
                 ("good latency p50/p95/p99 ms", f"{pct(.5):.0f} / {pct(.95):.0f} / {pct(.99):.0f}"),
                 ("server RSS after warm-up → end (MB)", f"{rss0:.0f} → {rss1:.0f} ({growth:+.1f}%)"),
                 ("Python stub PIDs unchanged", stubs0 == stubs1)]
        rows += [("server RSS every 10 s (MB)", " ".join(f"{v:.0f}" for _, v in load["rss_samples"]))]
        rows += [(f"  RSS {name} (MB)", f"{by0.get(name, 0):.0f} → {by1.get(name, 0):.0f}") for name in sorted(by1)]
        log("\n| load phase | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))
        for p in load["problems"][:10]:
            log(f"  problem: {p}")
        failed |= bool(load["problems"]) or growth >= 10 or stubs0 != stubs1

        log("[soak] restart: server stopped 3s into a 120-request stream (concurrency 8), started again on the same ports")
        r = restart_phase(server, blobs, log)
        log(f"| restart phase | value |\n|---|---|\n| requests | {r['requests']} |\n| completed | {r['completed']} |\n"
            f"| failed (indices) | {sorted(r['failed']) or 'none'} |\n| server down for (s) | {r['downtime']:.1f} |\n"
            f"| wall (s) | {r['seconds']:.1f} |")
        for i, e in sorted(r["failed"].items()):
            log(f"  request {i}: {e}")
        failed |= r["completed"] != r["requests"] or bool(r["failed"])

        log("[soak] stub-kill: SIGKILL one detector stub during 40 sequential requests")
        k = stub_kill_phase(server, blobs, log)
        log(f"| stub-kill phase | value |\n|---|---|\n| killed | pid {k['victim'][0]} ({k['victim'][1]}) |\n"
            f"| outcomes | {dict(k['outcomes'])} |\n| server alive and ready after | {k['server_alive']} |\n"
            f"| model ready after (Triton's view) | {k['model_ready']} |\n"
            f"| detector stubs after | {k['detector_stubs_after']} |")
        for name, msg in k["examples"].items():
            log(f"  {name}: {msg}")
    finally:
        server.stop()
    log(f"[soak] {'FAILED' if failed else 'passed'}; server log: {server.log_path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
