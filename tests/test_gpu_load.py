"""Correct under load on the GPU: nvJPEG's batched hardware path has a known stream-ordering defect on
H100-class GPUs (recycled output buffers came back corrupted: pytorch/vision#9606, pytorch/torchcodec#1634).
Buffers reused across streams and CUDA-graph slots are where it would bite, so the served GPU repository
(the session's server: YOLOTRITON_TEST_REPO on the GPU host) is driven at concurrency 128 with a mix of
the photos, and every response must equal that photo's answer at concurrency 1: the same count and
classes, boxes within 0.5 px, scores within 0.005 (each batch size has its own CUDA graph, so the last
bits differ between batch sizes)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient

from reference import detections, infer_bytes
from test_gpu_preprocess import gpu

REQUESTS, CONCURRENCY = 8000, 128


@gpu
def test_every_response_under_load_equals_the_photo_alone(server, photos):
    blobs = [p.read_bytes() for p in photos]
    one = grpcclient.InferenceServerClient(server.grpc_url)
    alone = [detections(infer_bytes(one, grpcclient, [b])) for b in blobs]
    assert sum(len(a[0]) for a in alone) >= 20
    clients = [grpcclient.InferenceServerClient(server.grpc_url) for _ in range(CONCURRENCY)]

    def call(k):
        i = k % len(blobs)
        return i, detections(infer_bytes(clients[k % CONCURRENCY], grpcclient, [blobs[i]]))

    start, bad = time.perf_counter(), []
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for k, (i, (boxes, scores, classes)) in enumerate(pool.map(call, range(REQUESTS))):
            b0, s0, c0 = alone[i]
            if len(c0) != len(classes) or not np.array_equal(c0, classes) or \
                    np.abs(boxes - b0).max(initial=0) > 0.5 or np.abs(scores - s0).max(initial=0) > 0.005:
                bad.append((k, photos[i].name, len(c0), len(classes)))
    assert not bad, f"{len(bad)} of {REQUESTS} responses differ from the photo alone, e.g. {bad[:5]}"
    print(f"{REQUESTS} requests at concurrency {CONCURRENCY} in {time.perf_counter() - start:.1f}s, all equal")
