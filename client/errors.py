"""Typed errors of the client, mapped from tritonclient's exceptions (gRPC status names, HTTP codes)."""
from __future__ import annotations


class YoloClientError(Exception):
    """Base class of everything the client raises on purpose."""


class ServerUnreachable(YoloClientError):
    """No server answered at the URL (after the retries)."""


class RequestTimeout(YoloClientError):
    """The server did not answer within the client's timeout."""


class ModelNotReady(YoloClientError):
    """The server answers but the model is not loaded or not ready."""


class BadImage(YoloClientError):
    """The server rejected the image (INVALID_ARGUMENT); the message is the server's."""


class ServerError(YoloClientError):
    """Any other error the server returned."""


def classify(exc: BaseException) -> YoloClientError:
    """Map a tritonclient / socket exception to the typed error it means."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, YoloClientError):
        return exc
    if isinstance(exc, InferenceServerException):
        status, msg = str(exc.status() or ""), exc.message() or str(exc)
        if "UNAVAILABLE" in status or "failed to connect" in msg.lower() or "connection refused" in msg.lower():
            return ServerUnreachable(msg)
        if "DEADLINE_EXCEEDED" in status or "timed out" in msg.lower() or "timeout" in msg.lower():
            return RequestTimeout(msg)
        if "INVALID_ARG" in status or status == "400":
            if "not ready" in msg.lower() or "unknown model" in msg.lower() or "not found" in msg.lower():
                return ModelNotReady(msg)
            return BadImage(msg)
        if "NOT_FOUND" in status or "UNAVAILABLE" in msg or "not ready" in msg.lower() or "unknown model" in msg.lower():
            return ModelNotReady(msg)
        return ServerError(f"{status}: {msg}" if status else msg)
    if isinstance(exc, (TimeoutError,)) or type(exc).__name__ in ("Timeout", "timeout", "TimeoutError"):
        return RequestTimeout(str(exc) or "request timed out")
    if isinstance(exc, (ConnectionError, OSError)):
        return ServerUnreachable(str(exc) or type(exc).__name__)
    return ServerError(f"{type(exc).__name__}: {exc}")
