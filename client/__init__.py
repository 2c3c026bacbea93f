"""Client library for yolotriton's Triton ensembles: typed detections over gRPC or HTTP, sync and asyncio.

    from client import YoloClient
    with YoloClient("127.0.0.1:8001") as c:
        for d in c.detect("dog.jpg"):
            print(d.label, d.score, d.box)
"""
from .aio import AsyncYoloClient
from .api import YoloClient
from .core import Detection, ModelInfo
from .errors import (BadImage, ModelFailure, ModelNotReady, ModelUnavailable, RequestTimeout, ServerError,
                     ServerUnreachable, YoloClientError)

__all__ = ["YoloClient", "AsyncYoloClient", "Detection", "ModelInfo", "YoloClientError", "ServerUnreachable",
           "RequestTimeout", "ModelNotReady", "ModelUnavailable", "BadImage", "ModelFailure", "ServerError"]
