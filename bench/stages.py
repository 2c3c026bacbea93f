#!/usr/bin/env python3
"""Per-stage cost of the pre/postprocess code the served models run (in-process, single thread).

  .venv/bin/python bench/stages.py [--repeat 300]

Prints median/p90 ms for: preprocess of darknet's dog.jpg (768x576 JPEG) to 416x416, and
postprocess (decode + class-aware NMS + top-K) of YOLOv4-416-shaped raw outputs
(52x52, 26x26, 13x13 heads = 10,647 candidates x 80 classes). The YOLOv4-416 outputs are made
from yolov4-tiny's real outputs on the photo (the 26x26 head upsampled to 52x52), so the score
distribution is a trained network's, not noise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402

from yolotriton.runtime import images  # noqa: E402
from yolotriton.runtime.detections import Decoder  # noqa: E402


def timeit(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return np.median(ts), np.percentile(ts, 90)


def interleaved(named_fns, repeat):
    for _, fn in named_fns:
        fn()
    ts = [[] for _ in named_fns]
    for _ in range(repeat):
        for i, (_, fn) in enumerate(named_fns):
            t = time.perf_counter()
            fn()
            ts[i].append((time.perf_counter() - t) * 1000)
    return [(name, np.median(t), np.percentile(t, 90)) for (name, _), t in zip(named_fns, ts)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--photo", type=Path, default=ROOT.parent / "shared" / "darknet" / "dog.jpg")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # as in the served models
    data = args.photo.read_bytes()
    _, w, h = images.image_size(data)
    out = np.empty((416, 416, 3), np.float32)
    rgb = images.decode(data, 416, 416)[0].copy()
    gray = np.empty(w * h, np.uint8)
    # Interleaved, one call of each per round, so the machine's noise hits every row alike.
    rows = interleaved([
        (f"preprocess {w}x{h} JPEG -> 416x416 (decode, resize, RGB float)",
         lambda: images.preprocess_bytes(data, 416, 416, "stretch", out=out)),
        ("  of which the JPEG decode (simplejpeg into the reused buffer)", lambda: images.decode(data, 416, 416)),
        ("  of which resize + scale to float (input already in cache)",
         lambda: images.resize(rgb, 416, 416, "stretch", out=out)),
        ("  the previous preprocess, cv2.imdecode + resize + scale, for comparison",
         lambda: np.multiply(cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB), (416, 416)),
                             np.float32(1 / 255), out=out, casting="unsafe")),
        ("  cv2.imdecode of the same file, for comparison",
         lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)),
        ("  luma-only decode (Huffman decoding + one IDCT plane: the floor for any full decode)",
         lambda: simplejpeg.decode_jpeg(data, "gray", buffer=gray)),
    ], args.repeat)
    big_img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    big = cv2.imencode(".jpg", cv2.resize(big_img, (w * 4, h * 4), interpolation=cv2.INTER_CUBIC))[1].tobytes()
    rows.append((f"preprocess the same photo upscaled to {w * 4}x{h * 4} (decoded at 1/4 scale)",
                 *timeit(lambda: images.preprocess_bytes(big, 416, 416, "stretch", out=out), max(20, args.repeat // 4))))
    rows.append((f"  full-scale cv2.imdecode of that {w * 4}x{h * 4} JPEG, for comparison",
                 *timeit(lambda: cv2.imdecode(np.frombuffer(big, np.uint8), cv2.IMREAD_COLOR_RGB), max(20, args.repeat // 4))))

    import onnxruntime as ort
    from yolotriton.build.darknet import build_graph, parse_cfg

    tiny_repo = ROOT / "model_repository" / "yolov4_detector" / "1" / "model.onnx"
    sess = ort.InferenceSession(str(tiny_repo), providers=["CPUExecutionProvider"])
    x, meta = images.preprocess_bytes(data, 416, 416)
    h13, h26 = sess.run(["head_0", "head_1"], {"images": x[None]})
    h52 = h26.repeat(2, axis=1).repeat(2, axis=2)
    spec = build_graph(parse_cfg(ROOT.parent / "shared" / "darknet" / "yolov4.cfg")).spec.__dict__
    full = {**spec, "input_height": 416, "input_width": 416,
            "heads": [{"name": hd.name, "anchors": hd.anchors, "stride": hd.stride, "grid": g,
                       "scale_x_y": hd.scale_x_y, "new_coords": hd.new_coords}
                      for hd, g in zip(spec["heads"], [(52, 52), (26, 26), (13, 13)])]}
    dec = Decoder(full)
    outs = {"head_0": h52, "head_1": h26, "head_2": h13}
    n = sum(v.shape[1] * v.shape[2] * 3 for v in outs.values())
    num = dec(outs, meta[None], 0.25, 0.45, 100)[0][0, 0]
    rows.append((f"postprocess YOLOv4-416 raw outputs ({n:,} candidates x 80 classes, {num} kept)",
                 *timeit(lambda: dec(outs, meta[None], 0.25, 0.45, 100), args.repeat)))
    outs8 = {k: np.repeat(v, 8, axis=0) for k, v in outs.items()}
    med, p90 = timeit(lambda: dec(outs8, np.repeat(meta[None], 8, 0), 0.25, 0.45, 100), max(20, args.repeat // 8))
    rows.append(("postprocess, batch of 8, per image", med / 8, p90 / 8))
    print(f"{'stage':<90} {'median ms':>10} {'p90 ms':>8}")
    for name, med, p90 in rows:
        print(f"{name:<90} {med:>10.3f} {p90:>8.3f}")


if __name__ == "__main__":
    main()
