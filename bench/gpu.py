#!/usr/bin/env python3
"""GPU host, in one run: served ensemble with the GPU detector vs the same ensemble with the CPU detector,
vs ONNX Runtime in-process (CUDA and CPU), on the same photos. Writes a markdown report.

  python bench/gpu.py --gpu-repo R1 --cpu-repo R2 --photos DIR --out DIR [--fp16-repo R3]

Run by scripts/gpu_host.sh on the lent GPU machine (no network there: wheels travel with the call).
The served numbers come from a bounded gRPC client loop (threads, one image per request).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUTPUTS = ("num_detections", "boxes", "scores", "classes")


def in_process(model: Path, provider: str, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=[provider])
    assert sess.get_providers()[0] == provider, f"{provider} not active: {sess.get_providers()}"
    for _ in range(3):
        sess.run(None, {"images": batch})
    lat, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(lat) < 5:
        t = time.perf_counter()
        sess.run(None, {"images": batch})
        lat.append(time.perf_counter() - t)
    return len(batch) * len(lat) / sum(lat), statistics.median(lat) * 1000


def served(repo: Path, blobs: list[bytes], concurrency: int, seconds: float, log_path: Path):
    import tritonclient.grpc as grpcclient

    from yolotriton.server import TritonServer

    with TritonServer(repo, log_path=log_path) as server:
        def one(blob):
            c = grpcclient.InferenceServerClient(server.grpc_url)
            data = np.array([[blob]], dtype=object)
            inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
            inp.set_data_from_numpy(data)
            r = c.infer("yolov4", [inp])
            return {k: r.as_numpy(k) for k in OUTPUTS}

        answers = [one(b) for b in blobs]  # also warms up
        results = {}
        for conc in concurrency:
            lat, deadline = [], time.monotonic() + seconds

            def worker(w):
                client = grpcclient.InferenceServerClient(server.grpc_url)
                out, i = [], w
                while time.monotonic() < deadline and len(out) < 100_000:
                    data = np.array([[blobs[i % len(blobs)]]], dtype=object)
                    inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
                    inp.set_data_from_numpy(data)
                    t = time.perf_counter()
                    client.infer("yolov4", [inp])
                    out.append(time.perf_counter() - t)
                    i += conc
                return out

            t0 = time.perf_counter()
            with ThreadPoolExecutor(conc) as pool:
                for part in pool.map(worker, range(conc)):
                    lat += part
            wall = time.perf_counter() - t0
            results[conc] = (len(lat) / wall, statistics.median(lat) * 1000)
    return answers, results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, required=True,
                    help="built with --detector-device gpu --detector-precision fp16 (holds model.onnx and model.fp16.onnx)")
    ap.add_argument("--photos", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--preprocess-instances", type=int, default=8)
    ap.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the repository's gated model.fp16.onnx")
    args = ap.parse_args()
    import onnxruntime as ort

    from yolotriton import images

    args.out.mkdir(parents=True, exist_ok=True)
    import shutil

    from yolotriton.build import copy_repository, rerender

    def variant(name, **changes):  # same weights (hard links), other configs
        dst = args.repo.parent / name
        if dst.exists():
            shutil.rmtree(dst)
        copy_repository(args.repo, dst)
        rerender(dst, **changes)
        return dst

    # 16 CPU cores feed one GPU: more preprocess/postprocess instances than the 2-core defaults
    feed = dict(preprocess_instances=args.preprocess_instances, postprocess_instances=max(1, args.preprocess_instances // 4))
    args.fp16_repo = variant("repo-gpu-fp16", **feed) if args.fp16 else None
    args.gpu_repo = variant("repo-gpu-fp32", detector_precision="fp32", **feed)
    args.cpu_repo = variant("repo-cpu-fp32", detector_precision="fp32", detector_device="cpu",
                            detector_instances=4, ort_threads=4, preprocess_instances=4)
    blobs = [p.read_bytes() for p in sorted(args.photos.glob("*.jpg"))]
    spec = json.loads((args.repo / "yolov4_postprocess" / "1" / "spec.json").read_text())
    size = (spec["input_width"], spec["input_height"])
    x1 = images.preprocess_bytes(blobs[0], *size)[0][None]
    x8 = np.repeat(x1, 8, axis=0)
    lines = [f"# GPU host benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"ONNX Runtime {ort.__version__}, providers {ort.get_available_providers()}", ""]
    import subprocess

    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    heads = len(spec.get("heads") or ())
    lines += [f"GPU: {gpu}; {len(blobs)} photos; {heads}-head model at {size[0]}x{size[1]} ({args.repo})", "", "| path | images/s | p50 ms |", "|---|---|---|"]
    onnx32 = args.gpu_repo / "yolov4_detector" / "1" / "model.onnx"
    rows = []
    for label, model, prov in (("in-process ORT CUDA fp32", onnx32, "CUDAExecutionProvider"),
                               ("in-process ORT CPU fp32", onnx32, "CPUExecutionProvider")):
        for b, x in ((1, x1), (8, x8)):
            ips, p50 = in_process(model, prov, x, args.seconds)
            rows.append((f"{label} b{b}", ips, p50))
            print(rows[-1], flush=True)
    if args.fp16_repo:
        fp16 = args.fp16_repo / "yolov4_detector" / "1" / "model.fp16.onnx"
        for b, x in ((1, x1), (8, x8)):
            ips, p50 = in_process(fp16, "CUDAExecutionProvider", x, args.seconds)
            rows.append((f"in-process ORT CUDA fp16 b{b}", ips, p50))
            print(rows[-1], flush=True)
    answers = {}
    repos = [("GPU detector", args.gpu_repo), ("CPU detector", args.cpu_repo)]
    if args.fp16_repo:
        repos.insert(1, ("GPU detector fp16", args.fp16_repo))
    for label, repo in repos:
        ans, res = served(repo, blobs, (1, 8, 32), args.seconds, args.out / f"server-{label.replace(' ', '_')}.log")
        answers[label] = ans
        for conc, (ips, p50) in res.items():
            rows.append((f"served ensemble, {label}, concurrency {conc}", ips, p50))
            print(rows[-1], flush=True)
    lines += [f"| {name} | {ips:.1f} | {p50:.1f} |" for name, ips, p50 in rows]
    # Same detections from the GPU and CPU detectors (served)?
    diffs = []
    for a, b in zip(answers["GPU detector"], answers["CPU detector"]):
        same_n = int(a["num_detections"][0, 0]) == int(b["num_detections"][0, 0])
        n = int(min(a["num_detections"][0, 0], b["num_detections"][0, 0]))
        diffs.append((same_n, bool((a["classes"][0, :n] == b["classes"][0, :n]).all()),
                      float(np.abs(a["scores"][0, :n] - b["scores"][0, :n]).max(initial=0)),
                      float(np.abs(a["boxes"][0, :n] - b["boxes"][0, :n]).max(initial=0))))
    lines += ["", "GPU vs CPU detector, served, per photo (same count, same classes, max |score diff|, max |box diff| px):",
              "", json.dumps(diffs)]
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
