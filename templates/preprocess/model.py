"""Preprocess: encoded image bytes (IMAGE) or a raw RGB array (RAW_IMAGE) -> network input + meta.

Settings come from config.pbtxt parameters: input size, resize mode (stretch|letterbox), limits,
device. On a GPU instance (device "gpu") encoded images are decoded and resized on the GPU and the
network input stays there (gpu_images.py); raw arrays and the CPU instance use images.py.
A bad image fails only its own request, with INVALID_ARG and the reason.
"""
import json
import os

import cv2
import numpy as np
import triton_python_backend_utils as pb_utils

import images
from images import ImageError, preprocess_array, preprocess_bytes


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.width, self.height = int(params["input_width"]), int(params["input_height"])
        self.mode = params["resize_mode"]
        self.fill = float(params.get("letterbox_fill", images.LETTERBOX_FILL))
        self.max_pixels, self.max_bytes = int(params["max_pixels"]), int(params["max_bytes"])
        cv2.setNumThreads(1)  # one image per thread of the stub; leave the cores to the other instances
        self.gpu = None
        if params.get("device") == "gpu":
            from gpu_images import GpuPreprocessor

            here = os.path.join(args["model_repository"], args["model_version"])
            self.gpu = GpuPreprocessor(os.path.join(here, "resize.onnx"), self.width, self.height, self.mode,
                                       self.max_pixels, self.max_bytes, int(args.get("model_instance_device_id") or 0),
                                       params.get("cuda_wait", "spin"))
        if images.simplejpeg is None:
            pb_utils.Logger.log_warn("simplejpeg is not installed in the stub's environment: JPEGs are decoded "
                                     "by OpenCV instead (same pixels, about 1 ms slower per photo)")

    def _one(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        if encoded is not None:
            items = encoded.as_numpy().reshape(-1)
            run = lambda item, out: preprocess_bytes(bytes(item), self.width, self.height, self.mode,
                                                     self.max_pixels, self.max_bytes, out, self.fill)
        else:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW_IMAGE")
            if raw is None:
                raise ImageError("request has neither IMAGE nor RAW_IMAGE")
            items = raw.as_numpy()
            run = lambda item, out: preprocess_array(item, self.width, self.height, self.mode, self.max_pixels, out,
                                                     self.fill)
        batch = np.empty((len(items), self.height, self.width, 3), np.float32)
        meta = np.empty((len(items), 6), np.float32)
        for i, item in enumerate(items):
            try:
                _, meta[i] = run(item, batch[i])
            except ImageError as e:
                raise ImageError(f"image {i} of the request: {e}" if len(items) > 1 else str(e)) from None
        return pb_utils.InferenceResponse([pb_utils.Tensor("images", batch), pb_utils.Tensor("image_meta", meta)])

    def _gpu(self, requests):
        """Encoded requests decoded together on the GPU; RAW_IMAGE requests take the CPU path."""
        encoded = {i: pb_utils.get_input_tensor_by_name(r, "IMAGE") for i, r in enumerate(requests)}
        encoded = {i: [bytes(x) for x in t.as_numpy().reshape(-1)] for i, t in encoded.items() if t is not None}
        done = dict(zip(encoded, self.gpu(list(encoded.values()))))
        responses = []
        for i, request in enumerate(requests):
            result = done.get(i)
            if result is None:
                responses.append(self._respond(request))
            elif isinstance(result, ImageError):
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)))
            else:
                batch, meta = result
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("images", batch),
                                                             pb_utils.Tensor("image_meta", meta)]))
        return responses

    def _respond(self, request):
        try:
            return self._one(request)
        except ImageError as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))

    def execute(self, requests):
        if self.gpu is not None:
            return self._gpu(requests)
        return [self._respond(request) for request in requests]
