"""asyncio client (tritonclient's grpc.aio / http.aio) and a bounded-concurrency stream over many images."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable, Sequence

import numpy as np

from .api import DEFAULT_URLS
from .core import (OUTPUTS, Detection, ImageLike, ModelInfo, grpc_target, load_image, preprocess_model_name,
                   request_parameters, to_detections)
from .errors import ModelNotReady, classify


class AsyncYoloClient:
    """The same calls as `YoloClient`, awaitable. Use `async with AsyncYoloClient(...) as c:`."""

    def __init__(self, url: str | None = None, model: str = "yolov4", protocol: str = "grpc", timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.25):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol {protocol!r}: expected grpc or http")
        self.url, self.model, self.protocol = url or DEFAULT_URLS[protocol], model, protocol
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        if protocol == "grpc":
            import tritonclient.grpc as sync_module
            import tritonclient.grpc.aio as module

            target, options = grpc_target(self.url)
            self._client = module.InferenceServerClient(target, channel_args=options)
        else:
            import tritonclient.http as sync_module
            import tritonclient.http.aio as module

            if "," in self.url:
                raise ValueError("several replicas are balanced over gRPC only: use protocol='grpc'")

            self._client = module.InferenceServerClient(self.url, conn_timeout=timeout)
        self._types = sync_module  # InferInput / InferRequestedOutput are shared with the sync module
        self._info: ModelInfo | None = None

    async def _call(self, fn, *args, **kwargs):
        for attempt in range(self.retries + 1):
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                err = classify(exc)
                if err.retryable and attempt < self.retries:
                    await asyncio.sleep(self.backoff * 2 ** attempt)
                    continue
                raise err from exc

    async def _config(self, name: str) -> dict:
        if self.protocol == "grpc":
            return (await self._call(self._client.get_model_config, name, as_json=True))["config"]
        return await self._call(self._client.get_model_config, name)

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready() and await self._client.is_model_ready(self.model))
        except Exception:
            return False

    async def get_info(self) -> ModelInfo:
        if self._info is None:
            ensemble = await self._config(self.model)
            pre = await self._config(preprocess_model_name(ensemble))
            raw = f"{self.model}_raw"
            try:
                ready = await self._client.is_model_ready(raw)
            except Exception:
                ready = False
            self._info = ModelInfo.from_configs(self.model, ensemble, pre, await self._config(raw) if ready else None)
        return self._info

    async def _infer(self, model, name, dtype, data, params) -> dict[str, np.ndarray]:
        inp = self._types.InferInput(name, list(data.shape), dtype)
        inp.set_data_from_numpy(data)
        outs = [self._types.InferRequestedOutput(n) for n in OUTPUTS]
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        res = await self._call(self._client.infer, model, [inp], outputs=outs, parameters=params, **kwargs)
        return {n: res.as_numpy(n) for n in OUTPUTS}

    async def detect(self, image: ImageLike, score_threshold: float | None = None, iou_threshold: float | None = None,
                     max_detections: int | None = None) -> list[Detection]:
        info = await self.get_info()
        params = request_parameters(score_threshold=score_threshold, iou_threshold=iou_threshold,
                                    max_detections=max_detections)
        x = load_image(image)
        if isinstance(x, bytes):
            out = await self._infer(info.entry, "IMAGE", "BYTES", np.array([[x]], dtype=object), params)
        else:
            if info.raw_entry is None:
                raise ModelNotReady(f"the server has no {self.model}_raw entry point for decoded arrays")
            out = await self._infer(info.raw_entry, "RAW_IMAGE", "UINT8", x[None], params)
        return to_detections(info, out)[0]

    async def detect_batch(self, images: Sequence[ImageLike], **thresholds) -> list[list[Detection]]:
        return await asyncio.gather(*(self.detect(im, **thresholds) for im in images))

    async def stream(self, images: Iterable[ImageLike], concurrency: int = 8,
                     **thresholds) -> AsyncIterator[tuple[int, list[Detection] | Exception]]:
        """Yield (index, detections) as they complete, at most `concurrency` requests in flight.

        A failed image yields (index, the typed exception) and the stream goes on: one bad photo
        among thousands should not stop the rest.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        await self.get_info()
        queue: asyncio.Queue = asyncio.Queue()
        it = iter(enumerate(images))
        in_flight = 0

        async def run(i, image):
            try:
                await queue.put((i, await self.detect(image, **thresholds)))
            except Exception as exc:  # surfaced to the consumer, typed
                await queue.put((i, classify(exc)))

        def launch() -> bool:
            nonlocal in_flight
            nxt = next(it, None)
            if nxt is None:
                return False
            asyncio.ensure_future(run(*nxt))
            in_flight += 1
            return True

        while in_flight < concurrency and launch():
            pass
        while in_flight:
            item = await queue.get()
            in_flight -= 1
            launch()
            yield item

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncYoloClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
