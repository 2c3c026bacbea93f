"""Preprocess stage for a batch of Triton requests: each request's encoded images (IMAGE) or raw RGB
arrays (RAW_IMAGE) -> the network input and each image's meta.

Entry point: `RequestPreprocessor(params, folder, device_id)(requests)`. Used by the preprocess model
and, with `--preprocess-in detector`, by the Python detector itself (copied into whichever model
folder preprocesses, beside images.py and, on a GPU instance, gpu_images.py and resize.onnx).

On a GPU instance (parameter device "gpu") the encoded images of all requests are decoded and resized
together on the GPU and the network input stays there (an ONNX Runtime OrtValue); raw arrays and the
CPU instance use images.py (a numpy array). A bad image fails only its own request (an ImageError in
its place), never the batch.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from . import images
ImageError = images.ImageError


def triton_input(request, name: str) -> np.ndarray | None:
    """A request's input as numpy (None when absent), read through the Python backend's utilities."""
    import triton_python_backend_utils as pb_utils

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class RequestPreprocessor:
    """Settings from the model config's string parameters: input_width/height, resize_mode, letterbox_fill,
    max_pixels, max_bytes, device (cpu|gpu) and cuda_wait."""

    def __init__(self, params: dict[str, str], folder: str, device_id: int = 0, log=print):
        self.width, self.height = int(params["input_width"]), int(params["input_height"])
        self.mode = params["resize_mode"]
        self.fill = float(params.get("letterbox_fill", images.LETTERBOX_FILL))
        self.max_pixels, self.max_bytes = int(params["max_pixels"]), int(params["max_bytes"])
        cv2.setNumThreads(1)  # one image per thread of the stub; leave the cores to the other instances
        self.gpu = None
        if params.get("device") == "gpu":
            from .gpu_images import GpuPreprocessor

            self.gpu = GpuPreprocessor(os.path.join(folder, "resize.onnx"), self.width, self.height, self.mode,
                                       self.max_pixels, self.max_bytes, device_id, params.get("cuda_wait", "spin"),
                                       decode_batch=int(params.get("decode_batch", "0")))
        if images.simplejpeg is None:
            log("simplejpeg is not installed in the stub's environment: JPEGs the CPU decodes go through OpenCV "
                "instead (same pixels, about 1 ms slower per photo)")

    def __call__(self, requests: list, tensor=triton_input) -> list:
        """Per request: (images [n, H, W, 3] float32, meta [n, 6]) or the ImageError it fails with.
        `tensor(request, name)` reads an input as numpy or None (triton_input in the stubs)."""
        encoded = {}
        for i, request in enumerate(requests):
            data = tensor(request, "IMAGE")
            if data is not None:
                encoded[i] = [bytes(x) for x in data.reshape(-1)]
        done = {}
        if self.gpu is not None and encoded:  # all encoded images of the batch in one GPU decode
            done = dict(zip(encoded, self.gpu(list(encoded.values()))))
        results = []
        for i, request in enumerate(requests):
            if i in done:
                results.append(done[i])
            elif i in encoded:
                results.append(self._on_cpu(encoded[i], lambda item, out: images.preprocess_bytes(
                    item, self.width, self.height, self.mode, self.max_pixels, self.max_bytes, out, self.fill)))
            else:
                raw = tensor(request, "RAW_IMAGE")
                results.append(ImageError("request has neither IMAGE nor RAW_IMAGE") if raw is None else
                               self._on_cpu(raw, lambda item, out: images.preprocess_array(
                                   item, self.width, self.height, self.mode, self.max_pixels, out, self.fill)))
        return results

    def _on_cpu(self, items, run):
        batch = np.empty((len(items), self.height, self.width, 3), np.float32)
        meta = np.empty((len(items), 6), np.float32)
        for i, item in enumerate(items):
            try:
                _, meta[i] = run(item, batch[i])
            except ImageError as e:
                return e.in_request(i, len(items))
        return batch, meta
