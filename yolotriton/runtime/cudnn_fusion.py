"""cuDNN's own fused convolutions for the torch engine (TorchEngine(fuse="cudnn")).

Under inductor alone, every convolution is cuDNN's, and the bias and activation after it run in one more kernel that
reads and writes the whole activation again (measured on the H200: the network at 0.56-0.60 of its convolutions'
bound). Here each Conv2d followed by a LeakyReLU (or by nothing: bias only) becomes one call of a cuDNN graph,
conv_fprop -> bias -> leaky_relu, built by NVIDIA's cudnn-frontend (`nvidia-cudnn-frontend`, pinned in
scripts/gpu_wheels.sh) so that cuDNN runs the epilogue inside the convolution kernel. It is a torch custom op, so
inductor compiles everything around it and CUDA graphs capture it like any other kernel.

Per input shape, on its first (uncaptured) run: cuDNN's ranked plans for the fused graph are built and timed against
what the unfused engine pays for the same layer (cuDNN's convolution and one pass for bias and activation); the fused
graph serves only where a plan is faster and its output agrees with torch's (FP16 tolerance). Elsewhere (no plan, e.g. 3 input channels; slower; different) the op runs
torch's own convolution and activation. `summary()` says how many shapes went which way.
"""
import torch
import torch.nn.functional as F

NO_ACTIVATION = 1.0  # a leaky slope of 1 is the identity: the graph ends at the bias


def available() -> str | None:
    """The cudnn-frontend and cuDNN versions this process would use, or None where the package is missing."""
    try:
        import cudnn
    except Exception:  # noqa: BLE001 -- missing, or its cuDNN failed to load: the engine says so and goes on
        return None
    return f"cudnn-frontend {cudnn.__version__} (cuDNN {cudnn.backend_version()})"


def _out_shape(x, weight, stride, padding, dilation):
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    return (n, k, (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1,
            (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1)


def reference(x, weight, bias, stride, padding, dilation, slope):
    """torch's own convolution (cuDNN's benchmarked algorithm) then the activation: the unfused path."""
    y = F.conv2d(x, weight, bias.reshape(-1), stride, padding, dilation)
    return y if slope == NO_ACTIVATION else F.leaky_relu(y, slope)


class _Plan:
    def __init__(self, graph, tensors, index, workspace):
        self.graph, self.tensors, self.index, self.workspace = graph, tensors, index, workspace


class Plans:
    """cuDNN graphs by input shape, built and chosen on first use (outside any CUDA-graph capture)."""

    def __init__(self):
        self.handle = None
        self.plans: dict = {}  # key -> _Plan, or a string: why this shape runs torch's own ops
        self.trials = 8  # cuDNN's top-ranked plans timed per shape

    def summary(self) -> str:
        fused = sum(isinstance(p, _Plan) for p in self.plans.values())
        why = sorted({p for p in self.plans.values() if isinstance(p, str)})
        return f"{fused} of {len(self.plans)} convolution shapes fused by cuDNN" + (f" (others: {'; '.join(why)})"
                                                                                    if why else "")

    def run(self, x, weight, bias, stride, padding, dilation, slope):
        x = x.contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
        key = (tuple(x.shape), tuple(weight.shape), stride, padding, dilation, slope, x.dtype)
        plan = self.plans.get(key)
        if plan is None:
            if torch.cuda.is_current_stream_capturing():  # a shape never run before capture: torch's ops
                return reference(x, weight, bias, stride, padding, dilation, slope)
            plan = self.plans[key] = self._choose(x, weight, bias, stride, padding, dilation, slope)
        if isinstance(plan, str):
            return reference(x, weight, bias, stride, padding, dilation, slope)
        import cudnn

        y = torch.empty(_out_shape(x, weight, stride, padding, dilation), dtype=x.dtype, device=x.device,
                        memory_format=torch.channels_last)
        workspace = torch.empty(max(plan.workspace, 1), dtype=torch.uint8, device=x.device)
        cudnn.set_stream(self.handle, torch.cuda.current_stream(x.device).cuda_stream)
        X, W, B, Y = plan.tensors
        plan.graph.execute_plan_at_index({X: x, W: weight, B: bias, Y: y}, workspace, plan.index, handle=self.handle)
        return y

    def _choose(self, x, weight, bias, stride, padding, dilation, slope):
        import cudnn

        if x.dtype != torch.half:
            return "not FP16"
        if self.handle is None:
            self.handle = cudnn.create_handle()
        stream = torch.cuda.current_stream(x.device)
        cudnn.set_stream(self.handle, stream.cuda_stream)
        k = weight.shape[0]
        try:
            g = cudnn.pygraph(io_data_type=cudnn.data_type.HALF, intermediate_data_type=cudnn.data_type.FLOAT,
                              compute_data_type=cudnn.data_type.FLOAT, handle=self.handle)
            X = g.tensor(name="X", dim=list(x.shape), stride=list(x.stride()), data_type=cudnn.data_type.HALF)
            W = g.tensor(name="W", dim=list(weight.shape), stride=list(weight.stride()), data_type=cudnn.data_type.HALF)
            B = g.tensor(name="B", dim=[1, k, 1, 1], stride=list(bias.stride()), data_type=cudnn.data_type.HALF)
            conv = g.conv_fprop(image=X, weight=W, pre_padding=list(padding), post_padding=list(padding),
                                stride=list(stride), dilation=list(dilation), compute_data_type=cudnn.data_type.FLOAT)
            y = g.bias(name="bias", input=conv, bias=B)
            if slope != NO_ACTIVATION:
                y = g.leaky_relu(name="act", input=y, negative_slope=slope)
            y.set_output(True).set_data_type(cudnn.data_type.HALF)
            g.validate()
            g.build_operation_graph()
            g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            g.check_support()
        except Exception as e:  # noqa: BLE001 -- cuDNN has no fused plan for this graph: torch's ops serve it
            return f"no plan ({type(e).__name__})"
        x = torch.randn_like(x)  # checked and timed on random input (the engine warms up on zeros)
        want = reference(x, weight, bias, stride, padding, dilation, slope)
        best, best_s = None, _time(lambda: _unfused_cost(x, weight, stride, padding, dilation, slope), stream)
        out = torch.empty_like(want)
        pack = {X: x, W: weight, B: bias, y: out}
        for i in range(min(g.get_execution_plan_count(), self.trials)):
            try:
                g.build_plan_at_index(i)
                ws = torch.empty(max(g.get_workspace_size_plan_at_index(i), 1), dtype=torch.uint8, device=x.device)
                step = lambda: g.execute_plan_at_index(pack, ws, i, handle=self.handle)  # noqa: B023
                step()
                stream.synchronize()
            except Exception:  # noqa: BLE001 -- this plan does not build or run here; the next may
                continue
            if not torch.allclose(out.float(), want.float(), rtol=2e-2, atol=2e-2):
                continue
            s = _time(step, stream)
            if s < best_s:
                best, best_s = _Plan(g, (X, W, B, y), i, ws.numel()), s
        return best if best is not None else "torch's own faster"


def _unfused_cost(x, weight, stride, padding, dilation, slope):
    """What the unfused engine pays for this layer: cuDNN's convolution, then (where an activation follows) one
    pass over its output, as inductor's one kernel for bias and activation; a bias alone it fuses into what follows."""
    y = F.conv2d(x, weight, None, stride, padding, dilation)
    return y if slope == NO_ACTIVATION else F.leaky_relu_(y, slope)


def _time(step, stream, reps: int = 10) -> float:
    """Median seconds of one call, by CUDA events on `stream` (after a warm-up call)."""
    step()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(stream)
        step()
        b.record(stream)
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return sorted(times)[len(times) // 2]


PLANS = Plans()


@torch.library.custom_op("yolotriton::conv_bias_leaky", mutates_args=())
def conv_bias_leaky(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: list[int],
                    padding: list[int], dilation: list[int], slope: float) -> torch.Tensor:
    return PLANS.run(x, weight, bias.reshape(1, -1, 1, 1), tuple(stride), tuple(padding), tuple(dilation), slope)


@conv_bias_leaky.register_fake
def _(x, weight, bias, stride, padding, dilation, slope):
    return torch.empty(_out_shape(x, weight, stride, padding, dilation), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


class FusedConv(torch.nn.Module):
    """A Conv2d and the LeakyReLU after it (slope NO_ACTIVATION: none) as one cuDNN graph."""

    def __init__(self, conv: torch.nn.Conv2d, slope: float):
        super().__init__()
        self.conv, self.slope = conv, float(slope)

    def forward(self, x):
        c = self.conv
        return conv_bias_leaky(x, c.weight, c.bias, list(c.stride), list(c.padding), list(c.dilation), self.slope)


def fuse(gm) -> int:
    """Rewrite the fx module in place: each Conv2d (zero padding given as numbers, one group, with a bias) whose only
    user is a LeakyReLU, or that has no activation after it, becomes a FusedConv. Returns how many."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        conv = gm.get_submodule(node.target)
        if (type(conv) is not torch.nn.Conv2d or conv.groups != 1 or conv.bias is None
                or conv.padding_mode != "zeros" or isinstance(conv.padding, str)):
            continue
        users = list(node.users)
        act = users[0] if len(users) == 1 and users[0].op == "call_module" else None
        if act is not None and type(gm.get_submodule(act.target)) is torch.nn.LeakyReLU:
            last, slope = act, gm.get_submodule(act.target).negative_slope
        else:  # bias only: whatever follows (mish, a residual add, the heads' reshapes) stays inductor's
            last, slope = node, NO_ACTIVATION
        name = node.target.replace(".", "_") + "_cudnn"
        gm.add_submodule(name, FusedConv(conv, slope))
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_module(name, (node.args[0],))
        last.replace_all_uses_with(fused)
        for dead in ([last, node] if last is not node else [node]):
            gm.graph.erase_node(dead)
        count += 1
    return count
