"""Synchronous client: typed detections in one call, over gRPC or HTTP (tritonclient)."""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Sequence

import numpy as np

from .core import (OUTPUTS, Detection, ImageLike, ModelInfo, batches, grpc_target, load_image,
                   preprocess_model_name, request_parameters, to_detections)
from .errors import ModelNotReady, classify

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
# Measured on loopback (bench/shm.py): a 21 MB RGB array took 236 ms over gRPC and 116 ms through
# system shared memory; at 1.3 MB the two were equal. So arrays from this size on use it.
SHM_MIN_BYTES = 4 * 1024 * 1024


def _is_loopback(url: str) -> bool:
    if "," in url or url.startswith("dns:"):  # several replicas: shared memory reaches none reliably
        return False
    host = url.rsplit(":", 1)[0].strip("[]") if url.count(":") else url
    return host in ("localhost", "::1") or host.startswith("127.")


class YoloClient:
    """Detections from a yolotriton ensemble.

    >>> client = YoloClient("127.0.0.1:8001")                     # gRPC; protocol="http" for port 8000
    >>> for d in client.detect("dog.jpg"): print(d.label, d.score, d.box)
    >>> YoloClient("10.0.0.5:8001,10.0.0.6:8001")                 # replicas: gRPC round_robin (also dns:///name:port)

    Only UNAVAILABLE (server unreachable or going away) is retried, `retries` times with
    exponential backoff from `backoff` seconds; everything else raises its typed error at once.
    """

    def __init__(self, url: str | None = None, model: str = "yolov4", protocol: str = "grpc", timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.25, shared_memory: str = "auto"):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol {protocol!r}: expected grpc or http")
        if shared_memory not in ("auto", "never"):
            raise ValueError(f"shared_memory {shared_memory!r}: expected auto or never")
        self.url, self.model, self.protocol = url or DEFAULT_URLS[protocol], model, protocol
        # System shared memory only reaches a server on this host; 'auto' uses it for large decoded arrays.
        self.use_shm = shared_memory == "auto" and _is_loopback(self.url)
        self._shm = None  # (handle, name, size): one region, grown as needed, reused across calls
        self._shm_lock = threading.Lock()
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        if protocol == "grpc":
            import tritonclient.grpc as module

            target, options = grpc_target(self.url)
            self._client = module.InferenceServerClient(target, channel_args=options)
        else:
            import tritonclient.http as module

            if "," in self.url:
                raise ValueError("several replicas are balanced over gRPC only: use protocol='grpc'")

            self._client = module.InferenceServerClient(self.url, connection_timeout=timeout, network_timeout=timeout)
        self._module = module
        self._info: ModelInfo | None = None

    # ------------------------------------------------------------------ plumbing
    def _call(self, fn: Callable, *args, **kwargs):
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # tritonclient raises its own, socket and gevent errors
                err = classify(exc)
                if err.retryable and attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                raise err from exc

    def _config(self, name: str) -> dict:
        if self.protocol == "grpc":
            return self._call(self._client.get_model_config, name, as_json=True, client_timeout=self.timeout)["config"]
        return self._call(self._client.get_model_config, name)

    # ------------------------------------------------------------------ readiness and metadata
    def is_ready(self) -> bool:
        """Server live and the model ready; False instead of raising when unreachable."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise ModelNotReady(f"{self.model} at {self.url} not ready after {timeout:.0f}s")
            time.sleep(0.25)

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            ensemble = self._config(self.model)
            pre = self._config(preprocess_model_name(ensemble))
            raw = f"{self.model}_raw"
            try:
                ready = self._call(self._client.is_model_ready, raw)
            except Exception:
                ready = False
            self._info = ModelInfo.from_configs(self.model, ensemble, pre, self._config(raw) if ready else None)
        return self._info

    # ------------------------------------------------------------------ inference
    def _infer(self, model: str, name: str, dtype: str, data: np.ndarray, params: dict | None) -> dict[str, np.ndarray]:
        inp = self._module.InferInput(name, list(data.shape), dtype)
        outs = [self._module.InferRequestedOutput(n) for n in OUTPUTS]
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        if self.use_shm and data.dtype != object and data.nbytes >= SHM_MIN_BYTES:
            with self._shm_lock:
                region = self._shm_region(data.nbytes)
                import tritonclient.utils.shared_memory as shm

                shm.set_shared_memory_region(region, [data])
                inp.set_shared_memory(self._shm[1], data.nbytes)
                res = self._call(self._client.infer, model, [inp], outputs=outs, parameters=params, **kwargs)
        else:
            inp.set_data_from_numpy(data)
            res = self._call(self._client.infer, model, [inp], outputs=outs, parameters=params, **kwargs)
        return {n: res.as_numpy(n) for n in OUTPUTS}

    def _shm_region(self, size: int):
        import tritonclient.utils.shared_memory as shm

        if self._shm is not None and self._shm[2] >= size:
            return self._shm[0]
        self._release_shm()
        name = f"yolotriton_{os.getpid()}_{id(self)}"
        handle = shm.create_shared_memory_region(name, f"/{name}", size)
        try:
            self._call(self._client.register_system_shared_memory, name, f"/{name}", size)
        except Exception:
            shm.destroy_shared_memory_region(handle)
            raise
        self._shm = (handle, name, size)
        return handle

    def _release_shm(self) -> None:
        if self._shm is None:
            return
        import tritonclient.utils.shared_memory as shm

        handle, name, _ = self._shm
        self._shm = None
        try:
            self._client.unregister_system_shared_memory(name)
        except Exception:
            pass  # the server may be gone; the local region is still ours to remove
        shm.destroy_shared_memory_region(handle)

    def infer_encoded(self, encoded: Sequence[bytes], **thresholds) -> dict[str, np.ndarray]:
        """The ensemble's raw outputs for encoded images sent in one request."""
        data = np.array([[b] for b in encoded], dtype=object)
        return self._infer(self.info.entry, "IMAGE", "BYTES", data, request_parameters(**thresholds))

    def infer_array(self, rgb: np.ndarray, **thresholds) -> dict[str, np.ndarray]:
        if self.info.raw_entry is None:
            raise ModelNotReady(f"the server has no {self.model}_raw entry point for decoded arrays")
        return self._infer(self.info.raw_entry, "RAW_IMAGE", "UINT8", rgb[None], request_parameters(**thresholds))

    def detect(self, image: ImageLike, score_threshold: float | None = None, iou_threshold: float | None = None,
               max_detections: int | None = None) -> list[Detection]:
        """Detections for one image: a path, encoded bytes, or an RGB uint8 array."""
        return self.detect_batch([image], score_threshold, iou_threshold, max_detections)[0]

    def detect_batch(self, images: Sequence[ImageLike], score_threshold: float | None = None,
                     iou_threshold: float | None = None, max_detections: int | None = None) -> list[list[Detection]]:
        """Encoded images go in requests of up to the server's max_batch_size; arrays one request each."""
        thr = dict(score_threshold=score_threshold, iou_threshold=iou_threshold, max_detections=max_detections)
        loaded = [load_image(im) for im in images]
        results: list[list[Detection] | None] = [None] * len(loaded)
        encoded = [i for i, x in enumerate(loaded) if isinstance(x, bytes)]
        for chunk in batches(encoded, self.info.max_batch_size):
            for i, dets in zip(chunk, to_detections(self.info, self.infer_encoded([loaded[i] for i in chunk], **thr))):
                results[i] = dets
        for i, x in enumerate(loaded):
            if results[i] is None:
                results[i] = to_detections(self.info, self.infer_array(x, **thr))[0]
        return results

    def close(self) -> None:
        with self._shm_lock:
            self._release_shm()
        self._client.close()

    def __enter__(self) -> "YoloClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
