"""The detector's PyTorch engine (engine.py's "torch"): the model's own ONNX, run by PyTorch on the GPU.

At load: ONNX Runtime folds the graph's shape arithmetic (basic optimisations, CPU) at two sentinel batch
sizes, onnx2torch turns it into a torch.fx module whose shape operands become Python constants (the entries
that differ between the folds read the batch size at run time), two rewrites keep the same function with
less work (mish with one exp; SPP's 9x9 and 13x13 pools as chained 5x5s), and the network runs in FP16 with
channels-last (NHWC) weights under torch.compile (inductor: bias, activation and residual adds fused after
cuDNN's benchmarked convolutions), followed by candidates.onnx's decode in FP32 where the folder has one.
Two compiles (dynamic batch) serve every bucket (2, 4, 8, ... max_batch), each captured in its own CUDA graph;
a batch of n images runs the smallest bucket of at least n. No hand-written CUDA: cuDNN, inductor, CUDA graphs.
"""
from __future__ import annotations

import operator
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch._inductor.config
from onnx2torch import convert
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from onnx2torch.node_converters.functions import OnnxFunction

from . import stage_times
from .cuda_stream import CudaStream, rows


def buckets(max_batch: int) -> list[int]:
    """Batch sizes that get their own CUDA graph: powers of two from 2 below max_batch, and max_batch (a batch of
    one runs in the bucket of two: dynamo compiles size 1 apart, and one image alone is the idle case)."""
    if max_batch == 1:
        return [1]
    sizes, b = [], 2
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


def static_onnx(path: str, batch: int):
    """The ONNX model at a fixed batch, its shape arithmetic (Shape→Slice→Concat→Reshape) folded into
    constants by ONNX Runtime's basic graph optimisations on the CPU (standard ONNX ops only)."""
    model = onnx.load(path)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    del model.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = os.path.join(tmp, "static.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        folded = onnx.load(opts.optimized_model_filepath)
    used = {n.domain for n in folded.graph.node}  # ONNX Runtime lists its own domains; keep those in use
    kept = [o for o in folded.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del folded.opset_import[:]
    folded.opset_import.extend(kept)
    return folded


SENTINELS = (7, 11)  # batch sizes the graph is folded at; entries of its shape constants that follow them are the batch


def to_torch(path: str):
    """onnx2torch's fx module of the ONNX model at `path`, for any batch size: its shape arithmetic folded
    (static_onnx at two sentinel batch sizes) into Python constants, the entries that differ between the two
    folds read from the input's batch size at run time, so that dynamo and CUDA-graph capture meet no host
    reads of device tensors and one compile serves every batch."""
    gm, other = (convert(static_onnx(path, b)) for b in SENTINELS)
    statics = {
        "OnnxReshape": lambda mod, shape: _Reshape(shape),
        "OnnxTile": lambda mod, repeats: _Tile(repeats),
        "OnnxExpand": lambda mod, shape: _Expand(shape),
        "OnnxTopK": lambda mod, k: _TopK(int(k[0]), mod.dim, mod.largest, mod.sorted),
        "OnnxSlice": lambda mod, starts, ends, axes=None, steps=None:
            _Slice(starts, ends, axes, steps) if steps is None or all(s > 0 for s in steps) else None,
    }
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(placeholder):
        batch = gm.graph.call_method("size", (placeholder, 0))
    twins = {n.name: n for n in other.graph.nodes}
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        make = statics.get(type(gm.get_submodule(node.target)).__name__)
        operands = [_constant(gm, a) for a in node.args[1:]]
        if make is None or any(o is None for o in operands):
            continue
        operands = [_batch_free(node.name, o, _constant(other, t))
                    for o, t in zip(operands, twins[node.name].args[1:])]
        replacement = make(gm.get_submodule(node.target), *operands)
        if replacement is None:
            continue
        name = node.target.replace(".", "_") + "_static"
        gm.add_submodule(name, replacement)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (node.args[0], batch))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    # onnx2torch returns a multi-output node whole where its first output is a graph output (TopK's values)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    results = list(output.args[0]) if isinstance(output.args[0], (list, tuple)) else [output.args[0]]
    for i, r in enumerate(results):
        if getattr(r, "op", None) == "call_module" and isinstance(gm.get_submodule(r.target), _TopK):
            with gm.graph.inserting_before(output):
                results[i] = gm.graph.call_function(operator.getitem, (r, 0))
    output.args = (results,)
    _fuse_mish(gm)
    _chain_pools(gm)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _module(gm, node, kind):
    """The node's module if it calls one of type `kind`, else None."""
    if node.op != "call_module":
        return None
    mod = gm.get_submodule(node.target)
    return mod if isinstance(mod, kind) else None


def _fuse_mish(gm) -> None:
    """Softplus -> Tanh -> Mul(x, ·), as tf2onnx exports Keras's mish, becomes one _Mish node: the same function
    written with one exp where the export has exp, log1p and tanh (measured on the H200: the mish kernels
    were a third of YOLOv4 608's time, bound by that arithmetic, not by memory)."""
    for softplus in list(gm.graph.nodes):
        mod = _module(gm, softplus, torch.nn.Softplus)
        if mod is None or mod.beta != 1 or len(softplus.users) != 1:
            continue
        tanh = next(iter(softplus.users))
        f = _module(gm, tanh, OnnxFunction)
        if f is None or f.function is not torch.tanh or len(tanh.users) != 1:
            continue
        mul = next(iter(tanh.users))
        m = _module(gm, mul, OnnxBinaryMathOperation)
        x = softplus.args[0]
        if m is None or m.math_op_function is not torch.mul or set(mul.args) != {x, tanh}:
            continue
        name = softplus.target.replace(".", "_") + "_mish"
        gm.add_submodule(name, _Mish())
        with gm.graph.inserting_before(mul):
            fused = gm.graph.call_module(name, (x,))
        mul.replace_all_uses_with(fused)
        for dead in (mul, tanh, softplus):
            gm.graph.erase_node(dead)


def _chain_pools(gm) -> None:
    """Stride-1 'same' max pools of size 4k+1 on one input (YOLOv4's SPP: 5, 9, 13) become one chain of 5x5 pools,
    each size read off the chain (max pooling composes: 5 then 5 is 9), as YOLOv5's SPPF computes the same."""
    by_input: dict = {}
    for node in gm.graph.nodes:
        mod = _module(gm, node, torch.nn.MaxPool2d)
        if mod is None:
            continue
        pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v)
        k = pair(mod.kernel_size)[0]
        if (pair(mod.kernel_size) == (k, k) and pair(mod.stride) == (1, 1) and pair(mod.padding) == (k // 2, k // 2)
                and pair(mod.dilation) == (1, 1) and not mod.ceil_mode and k % 4 == 1):
            by_input.setdefault(node.args[0], []).append((k, node))
    for x, pools in by_input.items():
        if len(pools) < 2:
            continue
        steps, cur = {}, x
        first = min((n for _, n in pools), key=lambda n: list(gm.graph.nodes).index(n))
        with gm.graph.inserting_before(first):
            for step in range(1, max(k for k, _ in pools) // 4 + 1):
                cur = gm.graph.call_function(torch.nn.functional.max_pool2d, (cur, 5, 1, 2))
                steps[step] = cur
        for k, node in pools:
            node.replace_all_uses_with(steps[k // 4])
            gm.graph.erase_node(node)


def _batch_free(name: str, a: list, b: list | None) -> list:
    """The constant folded at SENTINELS[0] with the entries that were SENTINELS[1] in the other fold as None."""
    if b is None or len(a) != len(b):
        raise RuntimeError(f"{name}: its shape operands change form with the batch size")
    out = []
    for x, y in zip(a, b):
        if x != y and (x, y) != SENTINELS:
            raise RuntimeError(f"{name}: a shape constant ({x} vs {y}) depends on the batch size other than as it")
        out.append(None if x != y else x)
    return out


def _constant(gm, arg):
    """A get_attr operand's value as a list of Python numbers, else None."""
    if getattr(arg, "op", None) != "get_attr":
        return None
    value = gm
    for part in arg.target.split("."):
        value = getattr(value, part)
    return value.detach().cpu().reshape(-1).tolist()


class _Reshape(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(None if s is None else int(s) for s in shape)

    def forward(self, x, batch):  # ONNX's 0 copies the input's dim; None is the batch size
        return x.reshape(tuple(batch if s is None else x.shape[i] if s == 0 else s for i, s in enumerate(self.shape)))


class _Mish(torch.nn.Module):
    def forward(self, x):  # x·tanh(ln(1+e^x)) = x·n(n+2)/(n(n+2)+2) with n = e^x; past 20, x (as Softplus's threshold)
        n = torch.exp(torch.clamp(x.float(), max=20.0))
        y = n * (n + 2)
        return (x.float() * y / (y + 2)).to(x.dtype)


class _Slice(torch.nn.Module):
    def __init__(self, starts, ends, axes=None, steps=None):
        super().__init__()
        axes = range(len(starts)) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        self.parts = [(int(a), slice(int(b), int(e), int(s))) for a, b, e, s in zip(axes, starts, ends, steps)]

    def forward(self, x, batch=None):
        index = [slice(None)] * x.dim()
        for axis, part in self.parts:
            index[axis] = part
        return x[tuple(index)]


class _Expand(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(None if s is None else int(s) for s in shape)

    def forward(self, x, batch):
        return x.expand(torch.broadcast_shapes(x.shape, tuple(batch if s is None else s for s in self.shape)))


class _TopK(torch.nn.Module):
    def __init__(self, k, dim, largest, sorted_):
        super().__init__()
        self.k, self.dim, self.largest, self.sorted = k, dim, largest, sorted_

    def forward(self, x, batch=None):
        top = torch.topk(x, self.k, dim=self.dim, largest=self.largest, sorted=self.sorted)
        return top.values, top.indices


class _Tile(torch.nn.Module):
    def __init__(self, repeats):
        super().__init__()
        self.repeats = tuple(int(r) for r in repeats)

    def forward(self, x, batch=None):
        return x.repeat(self.repeats)


class _Pipeline(torch.nn.Module):
    """Input float32 NHWC → network (FP16 when half) → heads as float32 → candidates (FP32), one module."""

    def __init__(self, network, candidates, half):
        super().__init__()
        self.network, self.candidates, self.half = network, candidates, half

    def forward(self, images):
        heads = self.network(images.half() if self.half else images)
        heads = [h.float() for h in (heads if isinstance(heads, (tuple, list)) else [heads])]
        out = self.candidates(*heads) if self.candidates is not None else heads
        return [o.contiguous() for o in (out if isinstance(out, (tuple, list)) else [out])]  # copied out by address


class TorchEngine:
    """`engine(parts)` -> the batch's outputs on the host (output_names order), as OrtEngine: parts are the requests'
    inputs (numpy, or ONNX Runtime values on the host or the device), joined in a bucket's fixed device input."""

    name = "torch"

    def __init__(self, model_path: str, candidates_path: str | None = None, *, max_batch: int, device_id: int = 0,
                 cuda_wait: str = "block", half: bool = True, compile: bool = True, graphs: bool = True,
                 batches=None, dynamic: bool = True, fuse: str = "inductor", log=print):
        started = time.perf_counter()
        self.cuda = CudaStream(device_id, cuda_wait, log)
        self.cudart, self.stream = self.cuda.cudart, self.cuda.stream  # what stage_times and the stub read
        torch.backends.cudnn.benchmark = True  # cuDNN's measured-best algorithm for each conv shape,
        torch.backends.cudnn.benchmark_limit = 0  # among all it offers (torch's default tries 10)
        if "python" not in os.path.basename(sys.executable or ""):  # a Triton stub: no interpreter for compile workers
            torch._inductor.config.compile_threads = 1
        self.log, self.max_batch, self.half = log, max_batch, half
        self.times = stage_times.OFF  # the stub sets a StageTimes to measure its stages under load
        self.device = torch.device("cuda", device_id)
        self.torch_stream = torch.cuda.ExternalStream(self.cuda.stream, device=self.device)
        graph = onnx.load(candidates_path or model_path, load_external_data=False).graph
        self.output_names = [o.name for o in graph.output]
        inp = onnx.load(model_path, load_external_data=False).graph.input[0]
        self.input_name = inp.name
        self.input_shape = [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
        network = to_torch(model_path)
        converted = time.perf_counter()
        self.fusion = None  # fuse="cudnn": convolutions with their bias and leaky ReLU as cuDNN graphs (cudnn_fusion)
        if fuse == "cudnn":
            from . import cudnn_fusion

            version = cudnn_fusion.available()
            if version is None:
                log("torch engine: nvidia-cudnn-frontend is not installed; its convolutions' bias and activation run "
                    "in inductor's kernels")
            else:
                fused = cudnn_fusion.fuse(network)
                network.recompile()
                self.fusion = (cudnn_fusion.PLANS, f"{version}, {fused} convolutions")
        elif fuse != "inductor":
            raise ValueError(f"fuse={fuse!r}: expected 'inductor' or 'cudnn'")
        module = _Pipeline(network.half() if half else network, to_torch(candidates_path) if candidates_path else None,
                           half).to(self.device).eval().to(memory_format=torch.channels_last)
        self.dynamic = dynamic  # one compile for every bucket (mark_dynamic in _Slot), else one per bucket
        self.fn = torch.compile(module, fullgraph=True, dynamic=None if dynamic else False) if compile else module
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self.slots = {b: _Slot(self, b, graphs) for b in batches or buckets(max_batch)}
        self.host = [self.cuda.pinned(list(o.shape), _numpy(o.dtype))
                     for o in self.slots[max(self.slots)].outputs]  # one set, the largest bucket's, shared
        first = self.slots[min(self.slots)].seconds
        log(f"torch engine loaded in {time.perf_counter() - started:.1f} s: ONNX to torch {converted - started:.1f} s, "
            f"compile, cuDNN benchmark and CUDA graphs of {len(self.slots)} buckets "
            f"{sum(s.seconds for s in self.slots.values()):.1f} s (the first {first:.1f} s); {_cache_note()}")

    def slot(self, n: int) -> "_Slot":
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} images: expected 1..{self.max_batch}")
        return self.slots[min(b for b in self.slots if b >= n)]

    def __call__(self, parts) -> list[np.ndarray]:
        """Run the batch made of `parts` and return its outputs on the host (views of pinned buffers, valid until
        the next call). Rows past the batch's images in its bucket hold earlier images: their outputs are dropped."""
        parts = parts if isinstance(parts, (list, tuple)) else [parts]
        n = sum(rows(p) for p in parts)
        slot = self.slot(n)
        offset = 0
        for p in parts:
            offset += self.cuda.copy_part(slot.input.data_ptr() + offset, p)
        self.times.mark("input")
        outputs = slot.run()
        self.times.mark("network")
        host = [h[:slot.b] for h in self.host]
        for h, v in zip(host, outputs):
            self.cuda.copy_async(h.ctypes.data, v.data_ptr(), h.nbytes)
        self.cuda.synchronize()
        self.times.mark("to_host")
        return [h[:n] for h in host]

    @property
    def providers(self) -> list[str]:
        return [f"torch {torch.__version__} (inductor, cuDNN {torch.backends.cudnn.version()}, "
                f"{'FP16' if self.half else 'FP32'}, CUDA graphs {'on' if self.pool is not None else 'off'}"
                + (f"; {self.fusion[1]}: {self.fusion[0].summary()}" if self.fusion else "") + ")"]


def _cache_note() -> str:
    """Inductor's on-disk FX graph cache in this process so far: hits, misses and where it is (a load that misses
    compiles from scratch; TORCHINDUCTOR_CACHE_DIR moves the cache, e.g. onto a volume that outlives a pod)."""
    from torch._dynamo.utils import counters

    try:
        from torch._inductor.runtime.runtime_utils import cache_dir
        where = cache_dir()
    except Exception:  # noqa: BLE001 -- a torch without it: the note says less
        where = "?"
    c = counters["inductor"]
    return f"inductor FX graph cache {c['fxgraph_cache_hit']} hits, {c['fxgraph_cache_miss']} misses ({where})"


def _numpy(dtype) -> type:
    return {torch.float32: np.float32, torch.int32: np.int32, torch.int64: np.int64}[dtype]


class _Slot:
    """One bucket: its fixed input, the outputs the compiled module wrote for it, the CUDA graph that replays it."""

    def __init__(self, engine: TorchEngine, b: int, graphs: bool):
        self.engine, self.b = engine, b
        started = time.perf_counter()
        self.input = torch.zeros([b, *engine.input_shape], dtype=torch.float32, device=engine.device)
        # a dynamic batch: one compile serves the buckets up to 15, one more the rest (torch's convolution guards
        # the batch there: measured with torch 2.11, TORCH_LOGS=recompiles)
        if engine.dynamic:
            torch._dynamo.maybe_mark_dynamic(self.input, 0)
        self.graph = None
        with torch.no_grad(), torch.cuda.stream(engine.torch_stream):
            for _ in range(3):  # compile (first bucket), cuDNN's benchmark, allocator warm-up
                self.outputs = engine.fn(self.input)
            if graphs:
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, pool=engine.pool, stream=engine.torch_stream):
                    self.outputs = engine.fn(self.input)
        engine.torch_stream.synchronize()
        self.seconds = time.perf_counter() - started  # for the load log

    def run(self):
        """Run on what the caller copied into self.input, on the engine's stream; the outputs stay on the device."""
        with torch.cuda.stream(self.engine.torch_stream):
            if self.graph is not None:
                self.graph.replay()
            else:
                with torch.no_grad():
                    self.outputs = self.engine.fn(self.input)
        return self.outputs
