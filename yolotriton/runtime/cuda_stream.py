"""One CUDA stream per detector instance, and the copies on it (cuda-python's runtime API): what every engine
shares. The requests' parts (numpy arrays, or ONNX Runtime values on the host or the device) are copied into an
engine's fixed device input with cudaMemcpyDefault, so either side may be host memory (Triton falls back to
pinned host memory when its CUDA pool is full), and the outputs come back into page-locked host buffers.
"""
from __future__ import annotations

import ctypes
import weakref
from typing import Callable

import numpy as np


class CudaStream:
    """The instance's device and non-blocking stream; with wait "block", waits sleep instead of spinning a core."""

    def __init__(self, device_id: int = 0, wait: str = "block", log: Callable[[str], None] = print):
        from cuda.bindings import runtime as cudart

        self.cudart, self.device_id = cudart, device_id
        self.check(cudart.cudaSetDevice(device_id))
        if wait == "block":  # waits sleep instead of spinning a core (ONNX Runtime's too)
            err = cudart.cudaSetDeviceFlags(cudart.cudaDeviceScheduleBlockingSync)[0]
            if int(err) != 0:  # e.g. another user of this process's context set other flags first
                log(f"cudaSetDeviceFlags(BlockingSync) failed ({err}): waits spin instead")
        self.stream = int(self.check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)))

    @staticmethod
    def check(result):
        err, *rest = result
        if int(err) != 0:
            raise RuntimeError(f"CUDA runtime error {err}")
        return rest[0] if len(rest) == 1 else rest

    def pinned(self, shape, dtype) -> np.ndarray:
        """A numpy array in page-locked host memory (full-speed copies from the GPU), freed with its last view."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self.check(self.cudart.cudaMallocHost(nbytes)))
        buf = (ctypes.c_byte * nbytes).from_address(ptr)
        weakref.finalize(buf, self.cudart.cudaFreeHost, ptr)
        return np.frombuffer(buf, dtype).reshape(shape)

    def copy_async(self, dst: int, src: int, nbytes: int) -> None:
        """cudaMemcpyDefault on the stream: the direction follows from the pointers."""
        self.check(self.cudart.cudaMemcpyAsync(dst, src, nbytes, self.cudart.cudaMemcpyKind.cudaMemcpyDefault,
                                               self.stream))

    def copy_part(self, dst: int, part) -> int:
        """A request's part ([n, H, W, 3] float32: numpy, or an OrtValue) to device address dst; its byte count."""
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part, np.float32)
            self.copy_async(dst, part.ctypes.data, part.nbytes)
            return part.nbytes
        nbytes = 4 * int(np.prod(part.shape()))
        self.copy_async(dst, part.data_ptr(), nbytes)
        return nbytes

    def synchronize(self) -> None:
        self.check(self.cudart.cudaStreamSynchronize(self.stream))


def rows(part) -> int:
    """Images in a request's part (numpy array or OrtValue)."""
    return int(part.shape[0]) if isinstance(part, np.ndarray) else int(part.shape()[0])
