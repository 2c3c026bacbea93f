"""The served pipeline run in-process (preprocess -> ONNX Runtime -> postprocess) from a built repository.

Same code as the Triton models (images.py, detections.py), so it is the baseline the benchmarks
compare the server with, and what tests use to check a build without a server.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime import images
from ..runtime.detections import Decoder
from ..runtime.settings import nms_options
from ..build.repository import spec_path, validate_repository


@dataclass
class Detections:
    boxes: np.ndarray  # [n, 4] x1,y1,x2,y2 original pixels
    scores: np.ndarray  # [n]
    classes: np.ndarray  # [n] int


class LocalPipeline:
    def __init__(self, repository: Path, name: str = "yolov4", threads: int = 0):
        import onnxruntime as ort

        configs = validate_repository(Path(repository))
        params = lambda model: {k: v.string_value for k, v in configs[model].parameters.items()}
        det = params(f"{name}_detector")
        pre = params(f"{name}_preprocess") if f"{name}_preprocess" in configs else det  # --preprocess-in detector
        post = params(f"{name}_postprocess") if f"{name}_postprocess" in configs else det  # det: --nms detector
        self.width, self.height = int(pre["input_width"]), int(pre["input_height"])
        self.mode, self.max_pixels = pre["resize_mode"], int(pre["max_pixels"])
        self.fill = float(pre.get("letterbox_fill", images.LETTERBOX_FILL))
        self.score_threshold, self.iou_threshold = float(post["score_threshold"]), float(post["iou_threshold"])
        self.max_detections = int(post["max_detections"])
        self.decoder = Decoder(json.loads(spec_path(Path(repository), name).read_text()), **nms_options(post))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        model_file = det.get("model_file", "model.onnx")  # the gated FP16 ONNX where the build chose it
        self.session = ort.InferenceSession(str(Path(repository) / f"{name}_detector" / "1" / model_file), opts,
                                            providers=["CPUExecutionProvider"])

    def preprocess(self, encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        batch = np.empty((len(encoded), self.height, self.width, 3), np.float32)
        meta = np.empty((len(encoded), 6), np.float32)
        for i, data in enumerate(encoded):
            _, meta[i] = images.preprocess_bytes(data, self.width, self.height, self.mode, self.max_pixels, out=batch[i],
                                                 fill=self.fill)
        return batch, meta

    def detect_tensors(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = self.decoder.output_names
        return dict(zip(names, self.session.run(names, {"images": batch})))

    def postprocess(self, outputs, meta, score_threshold=None, iou_threshold=None):
        return self.decoder(outputs, meta, self.score_threshold if score_threshold is None else score_threshold,
                            self.iou_threshold if iou_threshold is None else iou_threshold, self.max_detections)

    def __call__(self, encoded: list[bytes], **thresholds) -> list[Detections]:
        batch, meta = self.preprocess(encoded)
        num, boxes, scores, classes = self.postprocess(self.detect_tensors(batch), meta, **thresholds)
        return [Detections(boxes[i, :n], scores[i, :n], classes[i, :n]) for i, n in enumerate(num[:, 0])]
