"""The detector's ONNX Runtime engine (engine.py's "ort"): model.onnx (and candidates.onnx) for batches of
1..max_batch images, on the CPU or CUDA.

On the CPU provider it runs the joined batch as it comes. On CUDA (`OrtEngine(..., cuda=True)`):
- one CUDA stream per instance orders the input copies, the runs and the copies back;
- with `cuda_graphs` (default) each batch size 1..max_batch gets its own captured CUDA graph (ONNX
  Runtime's enable_cuda_graph, one graph id per batch size) over fixed input/output buffers. Two
  reasons, both measured on an H100 (docs/gpu-host.md): replaying a graph costs ~0.3 ms of CPU where
  launching the network's kernels one by one costs 1.3-1.7 ms (yolov4-tiny) or 4-7 ms (YOLOv4 608) per
  batch; and ONNX Runtime's Conv re-selects its cuDNN algorithm whenever the input shape differs from
  its previous run, ~32 ms of CPU per batch when the dynamic batcher's batch sizes keep changing (the
  served concurrency-8 dip). A replay runs no kernel code, so neither cost occurs.
- without graphs (`cuda_graphs=False`, or a model ONNX Runtime cannot capture, whose reason is logged)
  the batch is joined on the device and run with IO binding, every batch shape run once at start-up.
Only what the postprocess needs (the heads, or with candidates.onnx the top-K candidates) comes back
to the host, in one copy per output.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnxruntime as ort

from . import stage_times
from .cuda_stream import CudaStream, rows


class OrtEngine:
    """`engine(parts)` -> the batch's outputs on the host (output_names order); parts are the requests' inputs."""

    name = "ort"

    def __init__(self, model_path: str, candidates_path: str | None = None, *, max_batch: int,
                 cuda: bool = False, device_id: int = 0, intra_op_threads: int = 1, cuda_wait: str = "block",
                 cuda_graphs: bool = True, per_image: bool = False, log: Callable[[str], None] = print):
        self.max_batch, self.device_id, self.log = max_batch, device_id, log
        # per_image: the model's output shape depends on the image (it filters its own candidates), so a batch
        # cannot run as one call; each image runs alone and the outputs are padded with zero rows (pad_stack)
        self.per_image = per_image
        self.model_path, self.candidates_path = model_path, candidates_path
        self.cuda = CudaStream(device_id, cuda_wait, log) if cuda else None
        self.stream, self.cudart = (self.cuda.stream, self.cuda.cudart) if cuda else (0, None)
        self.intra_op_threads = intra_op_threads
        self.times = stage_times.OFF  # the stub sets a StageTimes to measure its stages under load
        self.graphs: dict[int, _GraphSlot] = {}
        self.host: list[np.ndarray] = []
        if cuda and cuda_graphs and not per_image:
            try:
                self._open(graphs=True)
                for b in range(1, max_batch + 1):  # capture every batch size before serving
                    self.graphs[b] = _GraphSlot(self, b)
            except Exception as e:  # noqa: BLE001 -- any capture failure: serve without graphs, say why
                self.log(f"CUDA graphs unavailable for this model ({str(e)[:300]}); running without them")
                self.graphs, self.host = {}, []
        if not self.graphs:
            self._open(graphs=False)
        if cuda and not self.graphs and not per_image:
            for b in range(1, max_batch + 1):  # every batch shape once, before serving
                self(np.zeros([b, *self.input_shape], np.float32))

    def _open(self, graphs: bool) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if self.cudart is not None:
            # HEURISTIC: cuDNN's default exhaustive search re-runs for every new batch size (without graphs, each
            # change of batch size re-selects); measured on an H100 it cut served throughput at concurrency 8 to a third.
            cuda = {"device_id": self.device_id, "cudnn_conv_algo_search": "HEURISTIC",
                    "user_compute_stream": str(self.stream)}
            if graphs:
                cuda["enable_cuda_graph"] = "1"
            providers = [("CUDAExecutionProvider", cuda)]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(self.model_path, opts, providers=providers)
        if self.cudart is not None and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"ONNX Runtime here lacks the CUDA provider (has {ort.get_available_providers()})")
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = self.session.get_inputs()[0].shape[1:]
        if not all(isinstance(d, int) for d in self.input_shape):
            raise RuntimeError(f"model input {self.input_name} has shape {self.session.get_inputs()[0].shape}: "
                               "only the batch dimension may be symbolic")
        self.head_names = [o.name for o in self.session.get_outputs()]
        self.candidates = None
        if self.candidates_path:
            self.candidates = ort.InferenceSession(self.candidates_path, opts, providers=providers)
            self.output_names = [o.name for o in self.candidates.get_outputs()]
        else:
            self.output_names = self.head_names
        self.binding = self.session.io_binding()
        if self.candidates is not None:
            self.candidate_binding = self.candidates.io_binding()

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, parts) -> list[np.ndarray]:
        """Run the batch made of `parts` (per request: a numpy array, or an OrtValue on the host or the device,
        [n, H, W, 3] float32) and return the outputs for the whole batch on the host, in output_names order.
        With CUDA graphs they are views of this detector's pinned buffers, valid until its next call."""
        parts = parts if isinstance(parts, (list, tuple)) else [parts]
        n = sum(rows(p) for p in parts)
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} images: expected 1..{self.max_batch}")
        if self.graphs:
            return self.graphs[n].run(parts)
        if self.per_image:
            host = [p if isinstance(p, np.ndarray) else p.numpy() for p in parts]  # each part copied once
            images = [h[i:i + 1] for h in host for i in range(len(h))]
            padded = pad_stack([dict(zip(self.output_names, self._run(np.ascontiguousarray(x)))) for x in images])
            return [padded[name] for name in self.output_names]
        if self.cudart is None:
            arrays = [p if isinstance(p, np.ndarray) else p.numpy() for p in parts]
            return self._run(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
        if len(parts) == 1:
            batch = parts[0]  # on the host or the device: ONNX Runtime takes either
        else:  # join the requests on the device, in the instance's stream
            batch = ort.OrtValue.ortvalue_from_shape_and_type([n, *self.input_shape], np.float32, "cuda",
                                                              self.device_id)
            offset = 0
            for p in parts:
                offset += self.cuda.copy_part(batch.data_ptr() + offset, p)
        return self._run(batch)

    def _run(self, batch) -> list[np.ndarray]:
        """Eager run of one joined batch (numpy or OrtValue); outputs on the host."""
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        if isinstance(batch, np.ndarray):
            b.bind_cpu_input(self.input_name, batch)
        else:
            b.bind_ortvalue_input(self.input_name, batch)
        on_cuda = self.cudart is not None
        if self.candidates is None:
            for name in self.head_names:
                b.bind_output(name, "cpu")
            self.session.run_with_iobinding(b)
            outputs = b.get_outputs()
        else:  # the heads stay where the network left them and only the top-K candidates come back
            for name in self.head_names:
                b.bind_output(name, "cuda" if on_cuda else "cpu", self.device_id)
            self.session.run_with_iobinding(b)
            c = self.candidate_binding
            c.clear_binding_inputs()
            c.clear_binding_outputs()
            for name, value in zip(self.head_names, b.get_outputs()):
                c.bind_ortvalue_input(name, value)
            for name in self.output_names:
                c.bind_output(name, "cpu")
            self.candidates.run_with_iobinding(c)
            outputs = c.get_outputs()
        if on_cuda:
            self.cuda.synchronize()  # the runs are on our stream: wait for them
        return [o.numpy() for o in outputs]


def pad_stack(per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One image's outputs each -> a batch, every output padded with zero rows to the longest (axis 1).
    Zero rows score 0 and a score must exceed the threshold, so padding never becomes a detection."""
    out = {}
    for name in per_image[0]:
        parts = [np.asarray(p[name]) for p in per_image]
        if parts[0].ndim >= 2 and len({q.shape[1] for q in parts}) > 1:
            n = max(q.shape[1] for q in parts)
            parts = [np.pad(q, [(0, 0), (0, n - q.shape[1])] + [(0, 0)] * (q.ndim - 2)) for q in parts]
        out[name] = np.concatenate(parts)
    return out


class _GraphSlot:
    """One batch size's fixed buffers, bindings and captured graph(s) (graph id = the batch size)."""

    def __init__(self, det: OrtEngine, b: int):
        self.det = det
        dev = lambda shape, dtype: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cuda", det.device_id)
        self.input = dev([b, *det.input_shape], np.float32)
        self.heads = [dev(s, np.float32) for s in self._shapes(det.session, b)]
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("gpu_graph_id", str(b))
        self.binding = det.session.io_binding()
        self.binding.bind_ortvalue_input(det.input_name, self.input)
        for name, v in zip(det.head_names, self.heads):
            self.binding.bind_ortvalue_output(name, v)
        types = [np.float32] * len(self.heads)
        if det.candidates is None:
            self.outputs = self.heads
        else:
            outs = det.candidates.get_outputs()
            types = [np.int32 if o.type == "tensor(int32)" else np.float32 for o in outs]
            self.outputs = [dev(s, t) for s, t in zip(self._shapes(det.candidates, b), types)]
            self.candidate_binding = det.candidates.io_binding()
            for name, v in zip(det.head_names, self.heads):
                self.candidate_binding.bind_ortvalue_input(name, v)
            for o, v in zip(outs, self.outputs):
                self.candidate_binding.bind_ortvalue_output(o.name, v)
        if not det.host:  # pinned host memory for max_batch images, shared by every batch size (one call at a time)
            det.host = [det.cuda.pinned([det.max_batch, *v.shape()[1:]], t) for v, t in zip(self.outputs, types)]
        self.host = [h[:b] for h in det.host]
        for _ in range(3):  # ONNX Runtime runs the first run(s) of a graph id normally, then captures
            self.run([np.zeros([b, *det.input_shape], np.float32)])

    @staticmethod
    def _shapes(session, b: int) -> list[list[int]]:
        """Output shapes at batch b: the model's static dims, its symbolic batch dim set to b."""
        shapes = []
        for o in session.get_outputs():
            dims = [d if isinstance(d, int) else None for d in o.shape]
            if dims[0] is not None and dims[0] != b or any(d is None for d in dims[1:]):
                raise RuntimeError(f"output {o.name} has shape {o.shape}: only the batch dimension may be symbolic")
            shapes.append([b, *dims[1:]])
        return shapes

    def run(self, parts) -> list[np.ndarray]:
        det = self.det
        offset = 0
        for p in parts:
            offset += det.cuda.copy_part(self.input.data_ptr() + offset, p)
        det.times.mark("input")
        det.session.run_with_iobinding(self.binding, self.run_options)
        det.times.mark("network")
        if det.candidates is not None:
            det.candidates.run_with_iobinding(self.candidate_binding, self.run_options)
            det.times.mark("candidates")
        for h, v in zip(self.host, self.outputs):
            det.cuda.copy_async(h.ctypes.data, v.data_ptr(), h.nbytes)
        det.cuda.synchronize()
        det.times.mark("to_host")
        return list(self.host)
