"""Postprocess: detector outputs + image meta -> num_detections, boxes, scores, classes.

Decoding, NMS, top-K and the per-request settings live in detections.py (shared with the in-process
pipeline, the tests and, with `--nms detector`, the Python detector); with `--decode detector` the
inputs are the detector's top-K candidates and only threshold + NMS run here. Thresholds come from
config parameters; a request may override score_threshold, iou_threshold and max_detections (<= the
configured maximum) through request parameters.
"""
import json
import os

import triton_python_backend_utils as pb_utils

from runtime.detections import Postprocessor


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        self.post = Postprocessor.in_model_folder(here, params)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                s = self.post.settings(request.parameters())
            except (ValueError, TypeError) as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
                continue
            outputs = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy()
                       for n in self.post.decoder.output_names}
            meta = pb_utils.get_input_tensor_by_name(request, "image_meta").as_numpy()
            final = self.post(outputs, meta, s)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, t) for n, t in final.items()]))
        return responses
