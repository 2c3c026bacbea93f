"""python -m client detect IMG... [--url URL] [--protocol grpc|http] [--json] [--out DIR]

Prints a table (or JSON) of detections per image and, with --out, writes each image with its
boxes and labels drawn. Exit status: 0 ok, 1 some image failed (bad image), 2 server problems.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .api import YoloClient
from .errors import BadImage, YoloClientError


def draw(path: Path, detections, out_dir: Path) -> Path:
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    for d in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        hue = (d.class_id * 47) % 180
        color = tuple(int(c) for c in cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0])
        cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
        text = f"{d.label} {d.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1, th + base + 2)
        cv2.rectangle(img, (x1, top - th - base - 2), (x1 + tw + 2, top), color, -1)
        cv2.putText(img, text, (x1 + 1, top - base - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{path.stem}.detections.jpg"
    cv2.imwrite(str(target), img)
    return target


def probe(args) -> int:
    """Exit 0 when every one of a few tiny RAW_IMAGE requests succeeds, else 1 with the reason."""
    import numpy as np

    try:
        with YoloClient(args.url, model=args.model, timeout=args.timeout, retries=0, shared_memory="never") as c:
            for _ in range(args.requests):
                c.detect(np.zeros((32, 32, 3), np.uint8))
    except Exception as e:  # any failure is a failed probe; the message is what kubectl describe shows
        print(f"probe failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"ok: {args.requests} inferences through {args.model}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m client")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("detect", help="detect objects in images")
    d.add_argument("images", nargs="+", type=Path)
    d.add_argument("--url", help="server address (default 127.0.0.1:8001 for gRPC, :8000 for HTTP); gRPC also takes "
                                          "replicas, h1:8001,h2:8001 or dns:///name:8001 (round-robin)")
    d.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    d.add_argument("--model", default="yolov4")
    d.add_argument("--timeout", type=float, default=30.0)
    d.add_argument("--score-threshold", type=float)
    d.add_argument("--iou-threshold", type=float)
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.add_argument("--out", type=Path, help="write each image with its detections drawn into this folder")
    pr = sub.add_parser("probe", help="liveness/readiness: a few tiny inferences through the whole ensemble "
                                      "(catches a dead Python stub, which Triton's own health endpoints do not)")
    pr.add_argument("--url", default="127.0.0.1:8001")
    pr.add_argument("--model", default="yolov4")
    pr.add_argument("--requests", type=int, default=4, help="sequential requests (reach every instance)")
    pr.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    if args.command == "probe":
        return probe(args)

    results, status = {}, 0
    try:
        client = YoloClient(args.url, model=args.model, protocol=args.protocol, timeout=args.timeout)
        for path in args.images:
            try:
                dets = client.detect(path, score_threshold=args.score_threshold, iou_threshold=args.iou_threshold)
                results[str(path)] = {"detections": [x.to_dict() for x in dets]}
                if args.out:
                    results[str(path)]["annotated"] = str(draw(path, dets, args.out))
            except (BadImage, FileNotFoundError, IsADirectoryError) as e:
                results[str(path)] = {"error": str(e)}
                status = 1
    except YoloClientError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
        return status
    for path, r in results.items():
        if "error" in r:
            print(f"{path}: error: {r['error']}")
            continue
        print(f"{path}: {len(r['detections'])} detections" + (f" -> {r['annotated']}" if "annotated" in r else ""))
        for x in r["detections"]:
            b = ", ".join(f"{v:7.1f}" for v in x["box"])
            print(f"  {x['label']:<16} {x['score']:.3f}  [{b}]")
    return status


if __name__ == "__main__":
    sys.exit(main())
