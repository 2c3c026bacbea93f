"""Typed errors of the client, mapped from tritonclient's exceptions (gRPC status names, HTTP codes)."""
from __future__ import annotations


class YoloClientError(Exception):
    """Base class of everything the client raises on purpose."""

    retryable = False  # the client retries (with backoff) only errors that say the server is unavailable


class ServerUnreachable(YoloClientError):
    """No server answered at the URL (after the retries)."""

    retryable = True


class RequestTimeout(YoloClientError):
    """The server did not answer within the client's timeout."""


class ModelNotReady(YoloClientError):
    """The server answers but the model is not loaded or not ready."""


class ModelUnavailable(ModelNotReady):
    """The model exists but has no loaded version right now: the server is starting or shutting down.

    Triton's way of saying UNAVAILABLE for one model, so it is retried like an unreachable server.
    """

    retryable = True


class BadImage(YoloClientError):
    """The server rejected the image (INVALID_ARGUMENT); the message is the server's."""


class ModelFailure(YoloClientError):
    """A model instance failed while running the request (e.g. its Python stub process died).

    Triton restarts a dead stub; the request that hit it is lost and is not retried automatically,
    since the failure may have been caused by the request itself.
    """


class ServerError(YoloClientError):
    """Any other error the server returned."""


_UNAVAILABLE_MODEL = ("has no available versions", "is not ready", "not ready for inferencing")
_MODEL_FAILURE = ("stub process", "not healthy", "unhealthy", "failed to process the request")


def classify(exc: BaseException) -> YoloClientError:
    """Map a tritonclient / socket exception to the typed error it means."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, YoloClientError):
        return exc
    if isinstance(exc, InferenceServerException):
        status, msg = str(exc.status() or ""), exc.message() or str(exc)
        low = msg.lower()
        if "UNAVAILABLE" in status or "failed to connect" in low or "connection refused" in low:
            return ServerUnreachable(msg)
        if "DEADLINE_EXCEEDED" in status or "timed out" in low or "timeout" in low:
            return RequestTimeout(msg)
        if any(s in low for s in _UNAVAILABLE_MODEL):
            return ModelUnavailable(msg)
        if "unknown model" in low or "NOT_FOUND" in status:
            return ModelNotReady(msg)
        if any(s in low for s in _MODEL_FAILURE):
            return ModelFailure(msg)
        if "INVALID_ARG" in status or status == "400":
            return BadImage(msg)
        return ServerError(f"{status}: {msg}" if status else msg)
    if isinstance(exc, TimeoutError) or type(exc).__name__ in ("Timeout", "timeout"):
        return RequestTimeout(str(exc) or "request timed out")
    if isinstance(exc, (ConnectionError, OSError)):
        return ServerUnreachable(str(exc) or type(exc).__name__)
    return ServerError(f"{type(exc).__name__}: {exc}")
