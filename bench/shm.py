#!/usr/bin/env python3
"""Does system shared memory help large batches on loopback? Measured, not assumed.

  .venv/bin/python bench/shm.py --url 127.0.0.1:8001 [--batch 8] [--runs 15]

Sends the same batch of encoded photos to the ensemble (a) as ordinary gRPC input and (b) through
a registered system shared-memory region (tritonclient.utils.shared_memory), alternating, and
prints the median latency of each and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import serialize_byte_tensor

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="127.0.0.1:8001")
    ap.add_argument("--model", default="yolov4")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--raw", type=int, metavar="SCALE", default=0,
                    help="instead: one decoded RGB photo upscaled SCALE times, to the _raw entry (UINT8)")
    args = ap.parse_args()
    photos = sorted((ROOT.parent / "shared" / "darknet").glob("*.jpg"))
    if args.raw:
        import cv2

        rgb = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)
        data = cv2.resize(rgb, None, fx=args.raw, fy=args.raw)[None]
        model, name, dtype = f"{args.model}_raw", "RAW_IMAGE", "UINT8"
    else:
        blobs = [photos[i % len(photos)].read_bytes() for i in range(args.batch)]
        data = np.array([[b] for b in blobs], dtype=object)
        model, name, dtype = args.model, "IMAGE", "BYTES"
    client = grpcclient.InferenceServerClient(args.url)
    outputs = [grpcclient.InferRequestedOutput(n) for n in ("num_detections", "boxes", "scores", "classes")]

    if dtype == "BYTES":
        payload = serialize_byte_tensor(data)
        size = len(payload.item())  # nbytes of an object array is a pointer size, not the payload
    else:
        payload, size = data, data.nbytes
    client.unregister_system_shared_memory("bench_in")
    handle = shm.create_shared_memory_region("bench_in", "/yolotriton_bench_in", size)
    try:
        shm.set_shared_memory_region(handle, [payload])  # BYTES go in serialized (length-prefixed)
        client.register_system_shared_memory("bench_in", "/yolotriton_bench_in", size)

        def plain():
            inp = grpcclient.InferInput(name, list(data.shape), dtype)
            inp.set_data_from_numpy(data)
            return client.infer(model, [inp], outputs=outputs)

        def shared():
            inp = grpcclient.InferInput(name, list(data.shape), dtype)
            inp.set_shared_memory("bench_in", size)
            return client.infer(model, [inp], outputs=outputs)

        a, b = plain(), shared()
        assert np.array_equal(a.as_numpy("boxes"), b.as_numpy("boxes")), "shared memory changed the answer"
        times = {"grpc": [], "shm": []}
        for _ in range(args.runs):
            for mode, fn in (("grpc", plain), ("shm", shared)):
                t = time.perf_counter()
                fn()
                times[mode].append((time.perf_counter() - t) * 1000)
    finally:
        client.unregister_system_shared_memory("bench_in")
        shm.destroy_shared_memory_region(handle)
    g, s = statistics.median(times["grpc"]), statistics.median(times["shm"])
    what = f"one RGB array {list(data.shape[1:])}" if args.raw else f"batch {args.batch} JPEGs"
    print(f"{what} ({size / 1e6:.2f} MB), {args.runs} runs each, alternating")
    print(f"plain gRPC      median {g:8.1f} ms")
    print(f"system shm      median {s:8.1f} ms")
    print(f"shm / gRPC      {s / g:.3f}")


if __name__ == "__main__":
    main()
