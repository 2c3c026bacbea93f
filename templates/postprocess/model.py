"""Postprocess: detector outputs + image meta -> num_detections, boxes, scores, classes.

Decoding, NMS and top-K live in detections.py (shared with the in-process pipeline and tests); with
`--decode detector` the inputs are the detector's top-K candidates and only threshold + NMS run here.
Thresholds come from config parameters; a request may override score_threshold, iou_threshold
and max_detections (<= the configured maximum) through request parameters.
"""
import json
import os

import cv2
import numpy as np
import triton_python_backend_utils as pb_utils

from detections import Decoder

OVERRIDABLE = ("score_threshold", "iou_threshold", "max_detections")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "spec.json")) as f:
            # inputs "candidates": the detector decoded its heads already (--decode detector, candidates.onnx)
            self.decoder = Decoder(json.load(f), from_candidates=params.get("inputs") == "candidates")
        self.defaults = {"score_threshold": float(params["score_threshold"]),
                         "iou_threshold": float(params["iou_threshold"]),
                         "max_detections": int(params["max_detections"])}
        cv2.setNumThreads(1)

    def _settings(self, request):
        s = dict(self.defaults)
        given = json.loads(request.parameters() or "{}")
        for key in OVERRIDABLE:
            if key in given:
                s[key] = type(self.defaults[key])(given[key])
        if not 0.0 <= s["score_threshold"] <= 1.0 or not 0.0 <= s["iou_threshold"] <= 1.0:
            raise ValueError(f"thresholds must lie in [0, 1], got score {s['score_threshold']}, iou {s['iou_threshold']}")
        if not 1 <= s["max_detections"] <= self.defaults["max_detections"]:
            raise ValueError(f"max_detections must be 1..{self.defaults['max_detections']}, got {s['max_detections']}")
        return s

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                s = self._settings(request)
            except (ValueError, TypeError) as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
                continue
            outputs = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.decoder.output_names}
            meta = pb_utils.get_input_tensor_by_name(request, "image_meta").as_numpy()
            num, boxes, scores, classes = self.decoder(outputs, meta, s["score_threshold"], s["iou_threshold"],
                                                       self.defaults["max_detections"])
            if s["max_detections"] < self.defaults["max_detections"]:  # fewer kept, same output shape
                k = s["max_detections"]
                num = np.minimum(num, k)
                boxes[:, k:], scores[:, k:], classes[:, k:] = 0, 0, -1
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("num_detections", num), pb_utils.Tensor("boxes", boxes),
                pb_utils.Tensor("scores", scores), pb_utils.Tensor("classes", classes)]))
        return responses
