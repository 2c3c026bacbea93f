"""Preprocess: encoded image bytes (IMAGE) or a raw RGB array (RAW_IMAGE) -> network input + meta.

Settings come from config.pbtxt parameters (input size, resize mode, limits, device); the work is
preprocess.RequestPreprocessor's. On a GPU instance the encoded images are decoded and resized on the
GPU and the network input leaves through DLPack, still on the GPU. A bad image fails only its own
request, with INVALID_ARG and the reason.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime.preprocess import ImageError, RequestPreprocessor


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.preprocess = RequestPreprocessor(params, os.path.join(args["model_repository"], args["model_version"]),
                                              int(args.get("model_instance_device_id") or 0), pb_utils.Logger.log_warn)

    def execute(self, requests):
        responses = []
        for result in self.preprocess(requests):
            if isinstance(result, ImageError):
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)))
                continue
            batch, meta = result
            images = (pb_utils.Tensor("images", batch) if isinstance(batch, np.ndarray)
                      else pb_utils.Tensor.from_dlpack("images", batch))
            responses.append(pb_utils.InferenceResponse([images, pb_utils.Tensor("image_meta", meta)]))
        return responses
