"""TensorRT plan stage (`--target tensorrt`): ONNX -> model.plan with the TensorRT 10/11 Python API.

Entry points:
- `build_plan(onnx, plan, repo_settings, log, ...)`: builds in this process where `import tensorrt`
  and a GPU exist (one optimization profile matched to the Triton config, a timing cache kept
  between builds, FP16 gated on accuracy) and writes `plan.json` metadata beside the plan.
- `render_docker_build(repository, ...)`: where TensorRT is absent (as on this project's machines),
  writes `build_plan.sh`, `Dockerfile` and `docker-compose.yml` that build the plan with `trtexec`
  inside the NGC Triton image that will serve it, and serve it there.
- `check_plan(plan_dir, ...)`: refuses a plan built by another TensorRT version or GPU.

A plan is specific to the TensorRT version and GPU that built it: build it with the TensorRT of the
serving Triton image (NGC `nvcr.io/nvidia/tritonserver:<yy.mm>-py3`; 24.10 is Triton 2.51, the
embedded server's version, and carries TensorRT 10.5).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from ..runtime.gate import GateReport, match_detections
from .spec import INPUT_NAME

DEFAULT_NGC_TAG = "24.10-py3"  # Triton 2.51 = the embedded server; its TensorRT builds the plan
TIMING_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "tensorrt-timing.cache"


class PlanError(RuntimeError):
    pass


@dataclass(frozen=True)
class PlanOptions:
    fp16: bool = True
    workspace_mib: int = 2048
    opt_batch: int | None = None  # default: the max batch (the dynamic batcher fills batches under load)
    timing_cache: Path = TIMING_CACHE


def profile_shapes(height: int, width: int, max_batch: int, opt_batch: int | None = None) -> dict[str, tuple]:
    """The one optimization profile: batch 1..max_batch_size, so the config can never exceed the plan."""
    opt = opt_batch or max_batch
    if not 1 <= opt <= max_batch:
        raise PlanError(f"optimization batch {opt} outside 1..{max_batch}")
    return {k: (b, height, width, 3) for k, b in (("min", 1), ("opt", opt), ("max", max_batch))}


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def gpu_identity() -> dict[str, str]:
    """Name and compute capability of GPU 0 (nvidia-smi ships with the driver)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PlanError(f"no NVIDIA GPU found (nvidia-smi: {e})") from e
    if out.returncode != 0 or "," not in out.stdout:
        raise PlanError(f"no NVIDIA GPU found (nvidia-smi: {out.stderr.strip() or out.stdout.strip()})")
    name, cc = (v.strip() for v in out.stdout.strip().splitlines()[0].split(",", 1))
    return {"gpu": name, "compute_capability": cc}


def check_tensorrt_rtx_available() -> None:
    if importlib.util.find_spec("tensorrt_rtx_bindings") is None:
        raise PlanError("--plan-builder tensorrt-rtx needs tensorrt-rtx-cu12-bindings and -libs (make installs them)")


def check_tensorrt_available() -> None:
    if not tensorrt_available():
        raise PlanError("--target tensorrt needs the TensorRT Python package (import tensorrt failed) and a GPU; "
                        "add --plan-builder docker to build the plan inside the NGC Triton image instead")
    gpu_identity()


def to_fp16(onnx_path: Path, out_path: Path) -> Path:
    """FP16 weights and math, FP32 inputs/outputs (what TensorRT 11's strongly typed networks take)."""
    import warnings

    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # it warns once per tiny weight it rounds to fp16's smallest value
        warnings.simplefilter("ignore")
        model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
    del model
    onnx.checker.check_model(str(out_path))  # by path: the checker reads the file, no second copy in memory here
    return out_path


def fp16_gate(fp32_onnx: Path, fp16_onnx: Path, spec_json: str, batch, score_threshold: float = 0.25,
              iou_threshold: float = 0.45, max_score_delta: float = 0.05, min_iou: float = 0.9) -> GateReport:
    """Compare FP16 and FP32 detections on real images (ONNX Runtime runs both here, CPU or GPU).

    Every detection scoring at least `score_threshold + max_score_delta` in either model must be found
    in the other: same class, IoU >= min_iou, score within max_score_delta. Detections nearer the
    threshold may legitimately cross it and are not required to match. The report keeps the FP32 detections
    (`reference`: what the served engine is checked against where it loads, runtime/gate.py).
    """
    results = [onnx_detections(path, spec_json, batch, score_threshold, iou_threshold)
               for path in (fp32_onnx, fp16_onnx)]
    report = match_detections(*results, score_threshold, max_score_delta, min_iou)
    report.reference = results[0]
    return report


def onnx_detections(onnx_path: Path, spec_json: str, batch, score_threshold: float, iou_threshold: float):
    """An ONNX model's detections (num, boxes, scores, classes; network pixels, top 100) on `batch` by ONNX Runtime
    (CPU or GPU, whichever this host has), one session held only for the run."""
    import onnxruntime as ort

    from ..runtime.detections import Decoder

    decoder = Decoder(json.loads(spec_json))
    meta = decoder.network_meta(len(batch))
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False  # one run each: give the activations back (build memory, issue #33)
    sess = ort.InferenceSession(str(onnx_path), options, providers=ort.get_available_providers())
    outs = dict(zip(decoder.output_names, sess.run(decoder.output_names, {INPUT_NAME: batch})))
    del sess  # one model in memory at a time
    return decoder(outs, meta, score_threshold, iou_threshold, 100)


RTX_AOT_TARGETS = ("SM89",)  # TensorRT-RTX builds ahead of time for these, no GPU needed (the check build)
TRITON_DTYPES = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
                 "INT8": "TYPE_INT8", "UINT8": "TYPE_UINT8", "BOOL": "TYPE_BOOL", "BF16": "TYPE_BF16"}


@dataclass(frozen=True)
class BuilderFlavor:
    """The few ways the builders that build_plan drives differ; everything else is one API.

    TensorRT 10: precision flags (BuilderFlag.FP16), timing cache. TensorRT 11: strong typing (no
    precision flags: an FP16 network comes from an FP16 ONNX). TensorRT-RTX (module
    tensorrt_rtx_bindings): strong typing too, timing-cache calls are deprecated no-ops, and it builds
    ahead of time for named compute capabilities on a machine without a GPU. Triton's TensorRT backend
    does not load TensorRT-RTX engines: here it only proves that our ONNX parses and builds.
    """

    product: str
    version: str
    strongly_typed: bool
    timing_cache: bool
    aot_targets: tuple[str, ...] = ()

    @classmethod
    def of(cls, trt) -> "BuilderFlavor":
        version = str(trt.__version__)
        if "rtx" in str(getattr(trt, "__name__", "")).lower():
            return cls("TensorRT-RTX", version, strongly_typed=True, timing_cache=False, aot_targets=RTX_AOT_TARGETS)
        major = int(version.split(".")[0])
        if major < 10:
            raise PlanError(f"TensorRT {version} is too old: this builder uses the TensorRT 10/11 API")
        return cls("TensorRT", version, strongly_typed=major >= 11, timing_cache=True)

    def configure(self, trt, config) -> None:
        if self.aot_targets:
            config.num_compute_capabilities = len(self.aot_targets)
        for i, target in enumerate(self.aot_targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, target), i)

    def runs_on(self) -> dict[str, str]:
        if self.aot_targets:
            return {"gpu": f"none at build time (ahead of time for {', '.join(self.aot_targets)})",
                    "compute_capability": ",".join(t[2:-1] + "." + t[-1] for t in self.aot_targets)}
        return gpu_identity()


def network_io(network) -> dict[str, list[dict]]:
    """The parsed network's inputs and outputs as Triton would declare them (name, data type, dims)."""
    def one(t):
        dtype = str(t.dtype).split(".")[-1]
        return {"name": t.name, "data_type": TRITON_DTYPES.get(dtype, dtype), "shape": [int(d) for d in t.shape]}
    return {"inputs": [one(network.get_input(i)) for i in range(network.num_inputs)],
            "outputs": [one(network.get_output(i)) for i in range(network.num_outputs)]}


def build_plan(onnx_path: Path, plan_path: Path, settings, log=print, options: PlanOptions = PlanOptions(),
               trt=None) -> dict:
    """Build `plan_path` from `onnx_path` with the TensorRT Python API; returns the metadata written beside it.

    `trt` is the builder module: tensorrt (10 or 11, default) or tensorrt_rtx_bindings (see BuilderFlavor);
    tests also pass a clearly named fake to reach the branches no real builder here takes.
    """
    import onnx

    trt = trt or importlib.import_module("tensorrt")
    flavor = BuilderFlavor.of(trt)
    graph_input = onnx.load(str(onnx_path), load_external_data=False).graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise PlanError(f"{onnx_path.name}: input {graph_input.name} has rank {len(dims)}, the detector takes "
                        "[batch, height, width, 3]")
    shapes = profile_shapes(dims[1], dims[2], settings.max_batch_size, options.opt_batch)
    source = onnx_path
    flags = 0  # TensorRT 10 deprecates EXPLICIT_BATCH (always on); 11 removes it
    if options.fp16 and flavor.strongly_typed:
        # no precision builder flags (strong typing): the precision is the ONNX's.
        source = to_fp16(onnx_path, plan_path.with_name("model.fp16.onnx"))
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise PlanError(f"{flavor.product} could not parse {source.name}:\n  " + "\n  ".join(errors or ["(no parser message)"]))
    io = network_io(network)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.fp16 and not flavor.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    flavor.configure(trt, config)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache_file = Path(options.timing_cache)
    if flavor.timing_cache:
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"[plan] building with {flavor.product} {flavor.version} ({'fp16' if options.fp16 else 'fp32'}, batch "
        f"{shapes['min'][0]}/{shapes['opt'][0]}/{shapes['max'][0]}, workspace {options.workspace_mib} MiB)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PlanError(f"{flavor.product}'s builder returned no engine (its log above says why)")
    plan_path.write_bytes(bytes(memoryview(serialized)))
    if flavor.timing_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    meta = {"builder": flavor.product, "tensorrt_version": flavor.version, **flavor.runs_on(),
            "precision": "fp16" if options.fp16 else "fp32", "profile": {k: list(v) for k, v in shapes.items()},
            **io, "onnx_sha256": _sha256(onnx_path), "options": {k: str(v) for k, v in asdict(options).items()}}
    (plan_path.parent / "plan.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def check_plan(plan_dir: Path, tensorrt_version: str | None = None, gpu: dict | None = None) -> dict:
    """Refuse a plan whose builder differs from the TensorRT/GPU given (default: this machine's)."""
    meta_path = Path(plan_dir) / "plan.json"
    if not meta_path.is_file():
        raise PlanError(f"{meta_path} is missing: cannot tell which TensorRT and GPU built this plan; rebuild it")
    meta = json.loads(meta_path.read_text())
    if meta.get("builder", "TensorRT") != "TensorRT":
        raise PlanError(f"{plan_dir / 'model.plan'} was built by {meta['builder']}, whose engines Triton's TensorRT "
                        "backend does not load: rebuild it with TensorRT where it is served")
    if tensorrt_version is None:
        tensorrt_version = str(importlib.import_module("tensorrt").__version__)
    gpu = gpu or gpu_identity()
    problems = []
    if meta["tensorrt_version"] != tensorrt_version:
        problems.append(f"built by TensorRT {meta['tensorrt_version']}, this is {tensorrt_version}")
    if (meta["gpu"], meta["compute_capability"]) != (gpu["gpu"], gpu["compute_capability"]):
        problems.append(f"built on {meta['gpu']} (sm {meta['compute_capability']}), this is {gpu['gpu']} "
                        f"(sm {gpu['compute_capability']})")
    if problems:
        raise PlanError(f"{plan_dir / 'model.plan'}: " + "; ".join(problems) + ": rebuild the plan where it is served")
    return meta


def trtexec_command(model_dir: str, height: int, width: int, max_batch: int, options: PlanOptions = PlanOptions(),
                    trtexec: str = "/usr/src/tensorrt/bin/trtexec") -> list[str]:
    """trtexec's equivalent of build_plan, for the NGC image (paths as seen inside the container)."""
    shapes = profile_shapes(height, width, max_batch, options.opt_batch)
    fmt = lambda s: "x".join(str(v) for v in s)
    cmd = [trtexec, f"--onnx={model_dir}/model.onnx", f"--saveEngine={model_dir}/model.plan",
           f"--minShapes={INPUT_NAME}:{fmt(shapes['min'])}", f"--optShapes={INPUT_NAME}:{fmt(shapes['opt'])}",
           f"--maxShapes={INPUT_NAME}:{fmt(shapes['max'])}", f"--memPoolSize=workspace:{options.workspace_mib}M",
           "--timingCacheFile=/models/.tensorrt-timing.cache"]
    if options.fp16:
        cmd.append("--fp16")
    return cmd


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def render_docker_build(repository: Path, spec, settings, options: PlanOptions = PlanOptions(),
                        tag: str = DEFAULT_NGC_TAG) -> list[Path]:
    """Write build_plan.sh, Dockerfile and docker-compose.yml into the repository root."""
    from .repository import templates

    command = trtexec_command(f"/models/{settings.detector}/1", spec.input_height, spec.input_width,
                              settings.max_batch_size, options)
    shapes = profile_shapes(spec.input_height, spec.input_width, settings.max_batch_size, options.opt_batch)
    ctx = {"detector": settings.detector, "name": settings.name, "tag": tag, "command": command,
           "precision": "fp16" if options.fp16 else "fp32", "gpu_preprocess": settings.preprocess_device == "gpu",
           "profile": json.dumps({k: list(v) for k, v in shapes.items()})}
    written = []
    for template, name, mode in (("build_plan.sh.j2", "build_plan.sh", 0o755), ("Dockerfile.j2", "Dockerfile", 0o644),
                                 ("docker-compose.yml.j2", "docker-compose.yml", 0o644)):
        path = Path(repository) / name
        path.write_text(templates().get_template(f"tensorrt/{template}").render(**ctx))
        path.chmod(mode)
        written.append(path)
    return written
