"""Repository stage: render the Triton model repository from templates/ and validate it.

Entry points: `render_repository(root, spec, settings)` writes every model folder (configs from the
jinja2 templates, the Python models, spec.json, labels); `validate_repository(root)` parses each
config.pbtxt into Triton's own ModelConfig protobuf and checks the ensemble wiring.

The configuration is data (`RepositorySettings`, `ModelConfig`, `Tensor`) turned into Triton's
text format in one place (`_render_config`).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jinja2

from ..runtime.decode import CANDIDATE_OUTPUTS
from ..runtime.detections import FINAL_OUTPUTS
from ..runtime.engine import ENGINES
from ..runtime.settings import NMS_KINDS
from .spec import INPUT_NAME, DetectorSpec

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"  # copied whole into each model folder running Python
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
TARGETS = ("python", "onnxruntime", "tensorrt")
RESIZE_MODES = ("stretch", "letterbox")
DECODE_STAGES = ("postprocess", "detector")
NMS_STAGES = ("postprocess", "detector")
PREPROCESS_STAGES = ("preprocess", "detector")
# Dynamic batch limits. On a GPU the Python detector's per-execute costs (decode call, graph replay, copies,
# NMS call) are spread over more images with larger batches: yolov4-tiny on an H200, one model x 6, same run
# (docs/results/gpu-h200-ceilings-before.md): max batch 32 served 4,039 img/s against 3,228 at 8.
DEFAULT_MAX_BATCH = 8
GPU_MAX_BATCH = 32


class RepositoryError(ValueError):
    """A rendered configuration is invalid or the ensemble is mis-wired."""


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's enum name, e.g. TYPE_FP32
    dims: tuple[int, ...]
    optional: bool = False
    label_filename: str | None = None


@dataclass
class ModelConfig:
    """The subset of Triton's ModelConfig this project writes; rendered by templates/model.pbtxt.j2."""

    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch_size: int
    backend: str | None = None
    platform: str | None = None
    default_model_filename: str | None = None
    instances: int = 1
    instance_kind: str = "KIND_CPU"
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    warmup: bool = False
    trt_accelerator: int = 0  # > 0: ONNX Runtime's TensorRT execution accelerator, FP16, this workspace (bytes)


@dataclass
class RepositorySettings:
    """Everything about the served repository that is not the network itself (build_repo.py's flags)."""

    name: str = "yolov4"
    target: str = "python"  # python | onnxruntime | tensorrt (resolved from auto by the caller)
    max_batch_size: int = DEFAULT_MAX_BATCH
    # GPU preprocess: JPEGs per nvImageCodec call (0: the whole dynamic batch in one call). The hardware decoder
    # alone decoded batches of 8 fastest on the H200 (6,374 img/s; 4,000 at 32); served, same run, 8 gave 4,215
    # img/s against 4,009 for whole batches of up to 32 (docs/results/gpu-h200-tiny-defaults.md)
    decode_batch: int = 8
    max_detections: int = 100
    score_threshold: float = 0.25  # darknet's detector default
    iou_threshold: float = 0.45  # darknet's NMS default
    nms_kind: str = "greedy"  # settings.NMS_KINDS: darknet's greedynms (default) or diounms
    beta_nms: float = 0.6  # diounms's exponent (darknet's cfg key beta_nms, default 0.6)
    best_class_only: bool = False  # after NMS, each box only with its best class (default: every class above)
    best_class_first: bool = False  # before NMS, each box only with its best class (hhk7734's yolov4 2.x)
    inside_input_only: bool = False  # before NMS, only boxes wholly inside the input and over 4 px (hhk7734 2.x)
    resize_mode: str = "stretch"  # darknet resizes without keeping the aspect ratio
    max_pixels: int = 50_000_000
    max_bytes: int = 64 * 1024 * 1024
    preprocess_instances: int = 2
    detector_instances: int = 2
    postprocess_instances: int = 1
    ort_threads: int = 1  # per detector instance: 2 instances x 1 thread beat 1 x 2 on 2 cores
    max_queue_delay_us: int = 0
    instance_kind: str = "KIND_CPU"
    trt_accelerator: bool = False  # onnxruntime target: Triton's TensorRT execution accelerator (FP16), GPU instances
    detector_device: str = "cpu"  # python target: "gpu" runs ONNX Runtime's CUDA execution provider in GPU instances
    detector_precision: str = "fp32"  # python target: "fp16" serves model.fp16.onnx (FP16 math, FP32 I/O), gated
    preprocess_device: str = "cpu"  # "gpu": nvImageCodec decode + ONNX Runtime CUDA resize, output stays on the GPU
    letterbox_fill: float = 0.5  # letterbox padding, in [0, 1] (darknet: grey 0.5)
    # "detector": the python detector decodes its raw heads into the top-K candidates (candidates.onnx, on the
    # GPU with it) and the postprocess gets those instead of the heads; "postprocess": the heads go to the postprocess
    decode: str = "postprocess"
    # Where threshold + NMS + top-K run: "postprocess" (the third model of the ensemble) or "detector" (the Python
    # detector does them on its candidates and answers with the final detections; needs decode "detector"). One
    # model fewer per request: no third step to schedule, copy into and wait for (docs/gpu-host.md measures it).
    nms: str = "postprocess"
    # Where decode + resize run: "preprocess" (the first model of the ensemble) or "detector" (the Python detector
    # takes the images itself and, with NMS there too, is the whole pipeline: one model per request, no tensor
    # crossing between models; needs nms "detector"). docs/gpu-host.md measures it.
    preprocess_in: str = "preprocess"
    # How the GPU stubs wait for the GPU: "block" (cudaDeviceScheduleBlockingSync: the thread sleeps until the GPU
    # is done) or "spin" (CUDA's default while cores are free: a core busy for the whole wait). Measured on an H100
    # (docs/gpu-host.md): YOLOv4 608 server CPU 4.4 ms/image with block, 13.8 with spin, same img/s; yolov4-tiny
    # 2.8 vs 3.0 ms, spin 7 % more img/s. CPU is what a GPU host runs out of first, so block is the default.
    cuda_wait: str = "block"
    # The Python detector on the GPU replays one captured CUDA graph per batch size ("on") instead of launching
    # its kernels one by one ("off"): less CPU per batch, and no cuDNN re-selection when the batch size changes
    # (ort_engine.py; docs/gpu-host.md has the measurements).
    cuda_graphs: str = "on"
    # What runs the Python detector's network (runtime/engine.py): "ort", ONNX Runtime; "torch", the same ONNX
    # converted by onnx2torch and compiled by torch.compile, FP16 NHWC, one CUDA graph per batch bucket (GPU only;
    # where torch is missing at load the model says so and ONNX Runtime runs it). docs/gpu-host.md measures both.
    engine: str = "ort"
    instances_reason: str = ""  # how the instance counts were chosen (--instances auto writes it)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise RepositoryError(f"target {self.target!r}: expected one of {', '.join(TARGETS)}")
        if self.resize_mode not in RESIZE_MODES:
            raise RepositoryError(f"resize mode {self.resize_mode!r}: expected stretch or letterbox")
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise RepositoryError(f"model name {self.name!r}: use letters, digits, '-' and '_'")
        for k in ("max_batch_size", "max_detections", "preprocess_instances", "detector_instances",
                  "postprocess_instances", "ort_threads", "max_pixels", "max_bytes"):
            if int(getattr(self, k)) < 1:
                raise RepositoryError(f"{k} must be at least 1, got {getattr(self, k)}")
        if not (0 <= self.score_threshold <= 1 and 0 <= self.iou_threshold <= 1):
            raise RepositoryError("thresholds must lie in [0, 1]")
        if self.nms_kind not in NMS_KINDS or not self.beta_nms > 0:
            raise RepositoryError(f"NMS kind {self.nms_kind!r} with beta_nms {self.beta_nms}: expected greedy or diou, "
                                  "and beta_nms above 0")
        if self.trt_accelerator and self.target != "onnxruntime":
            raise RepositoryError("the TensorRT execution accelerator is an option of --target onnxruntime")
        if self.detector_device not in ("cpu", "gpu") or self.detector_precision not in ("fp32", "fp16"):
            raise RepositoryError("detector device is cpu|gpu and precision fp32|fp16")
        if (self.detector_device, self.detector_precision) != ("cpu", "fp32") and self.target != "python":
            raise RepositoryError("--detector-device/--detector-precision are options of --target python")
        if self.preprocess_device not in ("cpu", "gpu"):
            raise RepositoryError(f"preprocess device {self.preprocess_device!r}: expected cpu or gpu")
        if self.preprocess_device == "gpu" and not self.detector_on_gpu:
            raise RepositoryError("--preprocess-device gpu needs the detector on the GPU "
                                  "(--detector-device gpu, or --target tensorrt)")
        if self.preprocess_in == "detector" and self.target != "python":  # before the decode/nms checks it implies
            raise RepositoryError("--preprocess-in detector is an option of --target python (the Python-backend detector)")
        if self.decode not in DECODE_STAGES:
            raise RepositoryError(f"decode {self.decode!r}: expected one of {', '.join(DECODE_STAGES)}")
        if self.decode == "detector" and self.target != "python":
            raise RepositoryError("--decode detector is an option of --target python (the Python-backend detector)")
        if self.nms not in NMS_STAGES:
            raise RepositoryError(f"nms {self.nms!r}: expected one of {', '.join(NMS_STAGES)}")
        if self.nms == "detector" and self.decode != "detector":
            raise RepositoryError("--nms detector works on the detector's candidates: it needs --decode detector")
        if self.preprocess_in not in PREPROCESS_STAGES:
            raise RepositoryError(f"preprocess in {self.preprocess_in!r}: expected one of {', '.join(PREPROCESS_STAGES)}")
        if self.preprocess_in == "detector" and self.nms != "detector":
            raise RepositoryError("--preprocess-in detector makes the detector the whole pipeline: it needs --nms detector")
        if self.cuda_wait not in ("spin", "block"):
            raise RepositoryError(f"cuda wait {self.cuda_wait!r}: expected spin or block")
        if self.cuda_graphs not in ("on", "off"):
            raise RepositoryError(f"cuda graphs {self.cuda_graphs!r}: expected on or off")
        if self.engine not in ENGINES:
            raise RepositoryError(f"engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.engine == "torch" and (self.target != "python" or self.detector_device != "gpu"):
            raise RepositoryError("--engine torch runs the Python detector on the GPU: it needs --target python and "
                                  "--detector-device gpu")
        if not 0 <= self.letterbox_fill <= 1:
            raise RepositoryError(f"letterbox fill {self.letterbox_fill}: expected a value in [0, 1]")

    @property
    def detector_on_gpu(self) -> bool:
        return self.target == "tensorrt" or self.trt_accelerator or self.detector_device == "gpu"

    @property
    def preprocess(self) -> str:
        return f"{self.name}_preprocess"

    @property
    def detector(self) -> str:
        return f"{self.name}_detector"

    @property
    def postprocess(self) -> str:
        return f"{self.name}_postprocess"

    @property
    def raw_entry(self) -> str:
        return f"{self.name}_raw"


def _pbtxt_string(value: str) -> str:
    """Escape for a double-quoted protobuf text-format string (JSON's escapes are a subset it accepts)."""
    return json.dumps(str(value), ensure_ascii=False)[1:-1]


def templates() -> jinja2.Environment:
    """The project's jinja2 templates (templates/): every Triton config, deploy manifest and TensorRT file renders here."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters["pbtxt"] = _pbtxt_string
    return env


def _render_config(cfg: ModelConfig) -> str:
    return templates().get_template("model.pbtxt.j2").render(**cfg.__dict__)


def model_configs(spec: DetectorSpec, s: RepositorySettings) -> tuple[list[ModelConfig], list[dict]]:
    """The member models (preprocess unless --preprocess-in detector, detector, and postprocess unless --nms
    detector) and the two ensembles (as template contexts)."""
    h, w = spec.input_height, spec.input_width
    net_in = Tensor(INPUT_NAME, "TYPE_FP32", (h, w, 3))
    meta = Tensor("image_meta", "TYPE_FP32", (6,))
    if s.decode == "detector":
        if not spec.heads:
            raise RepositoryError("--decode detector needs raw YOLO heads; this model's outputs are already decoded "
                                  "(use --decode postprocess)")
        from .candidates_graph import candidate_count

        k_cand = candidate_count(spec)
        det_outs = [Tensor(n, t, d) for n, t, d in zip(CANDIDATE_OUTPUTS, ("TYPE_FP32", "TYPE_FP32", "TYPE_INT32"),
                                                       ((k_cand, 4), (k_cand,), (k_cand,)))]
    else:
        det_outs = [Tensor(n, "TYPE_FP32", tuple(d)) for n, d in spec.output_dims().items()]
    k = s.max_detections
    final = [Tensor(n, t, d, label_filename="labels.txt" if n == "classes" else None) for n, t, d in zip(
        FINAL_OUTPUTS, ("TYPE_INT32", "TYPE_FP32", "TYPE_FP32", "TYPE_INT32"), ((1,), (k, 4), (k,), (k,)))]
    thresholds = {"score_threshold": str(s.score_threshold), "iou_threshold": str(s.iou_threshold),
                  "max_detections": str(k), "inputs": "candidates" if s.decode == "detector" else "heads",
                  "nms_kind": s.nms_kind, "beta_nms": str(s.beta_nms),
                  "best_class_only": "on" if s.best_class_only else "off",
                  "best_class_first": "on" if s.best_class_first else "off",
                  "inside_input_only": "on" if s.inside_input_only else "off"}
    fused = s.nms == "detector"  # the detector answers with the final detections
    whole = s.preprocess_in == "detector"  # ... and takes the images: it is the whole pipeline
    pre = ModelConfig(
        name=s.preprocess, backend="python", max_batch_size=s.max_batch_size,
        inputs=[Tensor("IMAGE", "TYPE_STRING", (1,), optional=True),
                Tensor("RAW_IMAGE", "TYPE_UINT8", (-1, -1, 3), optional=True)],
        outputs=[net_in, meta], instances=s.preprocess_instances,
        instance_kind="KIND_GPU" if s.preprocess_device == "gpu" else "KIND_CPU",
        parameters={"input_width": str(w), "input_height": str(h), "resize_mode": s.resize_mode,
                    "letterbox_fill": str(s.letterbox_fill), "max_pixels": str(s.max_pixels),
                    "max_bytes": str(s.max_bytes), "device": s.preprocess_device, "cuda_wait": s.cuda_wait,
                    "decode_batch": str(s.decode_batch)})
    on_gpu = s.detector_on_gpu
    det_common = dict(name=s.detector, inputs=pre.inputs if whole else [net_in, meta] if fused else [net_in],
                      outputs=final if fused else det_outs, max_batch_size=s.max_batch_size,
                      instances=s.detector_instances, instance_kind="KIND_GPU" if on_gpu else s.instance_kind,
                      max_queue_delay_us=s.max_queue_delay_us, warmup=not whole)  # no zero-filled image decodes
    if s.target == "python":
        providers = "CUDAExecutionProvider,CPUExecutionProvider" if s.detector_device == "gpu" else "CPUExecutionProvider"
        det = ModelConfig(backend="python", parameters={
            "intra_op_threads": str(s.ort_threads), "execution_providers": providers,
            "model_file": "model.fp16.onnx" if s.detector_precision == "fp16" else "model.onnx",
            "candidates_file": "candidates.onnx" if s.decode == "detector" else "", "cuda_wait": s.cuda_wait,
            "cuda_graphs": s.cuda_graphs, "engine": s.engine, "nms": "on" if fused else "off", **(thresholds if fused else {}),
            "per_image": "on" if spec.per_image else "off",  # outputs shaped by the image: each runs alone
            **({"preprocess": "on", **pre.parameters} if whole else {}),
            # GPU preprocess model: take its output where it is (on the GPU) instead of Triton's copy to the host
            "FORCE_CPU_ONLY_INPUT_TENSORS": "no" if s.preprocess_device == "gpu" and not whole else "yes"},
            **det_common)
    elif s.target == "onnxruntime":
        det = ModelConfig(platform="onnxruntime_onnx", default_model_filename="model.onnx",
                          parameters={"intra_op_thread_count": str(s.ort_threads)},
                          trt_accelerator=(2 << 30) if s.trt_accelerator else 0, **det_common)
    else:
        det = ModelConfig(platform="tensorrt_plan", default_model_filename="model.plan", **det_common)
    post = ModelConfig(
        name=s.postprocess, backend="python", max_batch_size=s.max_batch_size, inputs=det_outs + [meta],
        outputs=final, instances=s.postprocess_instances, parameters=thresholds)
    names = lambda tensors: {t.name: t.name for t in tensors}
    steps = lambda entry_input: [
        {"model": s.detector, "input_map": {entry_input: entry_input}, "output_map": names(final)}] if whole else [
        {"model": s.preprocess, "input_map": {entry_input: entry_input},
         "output_map": {INPUT_NAME: INPUT_NAME, "image_meta": "image_meta"}},
        *([{"model": s.detector, "input_map": names([net_in, meta]), "output_map": names(final)}] if fused else [
            {"model": s.detector, "input_map": names([net_in]), "output_map": names(det_outs)},
            {"model": s.postprocess, "input_map": names(det_outs + [meta]), "output_map": names(final)}]),
    ]
    # Clients read the labels from the ensemble's config (Triton serves configs, not label files).
    params = {"labels": json.dumps(list(spec.labels), ensure_ascii=False)}
    ensembles = [
        {"name": s.name, "max_batch_size": s.max_batch_size, "input": Tensor("IMAGE", "TYPE_STRING", (1,)),
         "outputs": final, "steps": steps("IMAGE"), "parameters": params},
        {"name": s.raw_entry, "max_batch_size": s.max_batch_size, "input": Tensor("RAW_IMAGE", "TYPE_UINT8", (-1, -1, 3)),
         "outputs": final, "steps": steps("RAW_IMAGE"), "parameters": params},
    ]
    return ([det] if whole else [pre, det] if fused else [pre, det, post]), ensembles


def render_repository(root: Path, spec: DetectorSpec, s: RepositorySettings) -> None:
    """Write configs, model code and metadata under `root` (the detector's weights are placed by the caller)."""
    members, ensembles = model_configs(spec, s)
    labels = "\n".join(spec.labels) + "\n"
    for cfg in members:
        (root / cfg.name / "1").mkdir(parents=True, exist_ok=True)
        (root / cfg.name / "config.pbtxt").write_text(_render_config(cfg))
    for e in ensembles:
        (root / e["name"] / "1").mkdir(parents=True, exist_ok=True)  # Triton wants the (empty) version folder
        (root / e["name"] / "config.pbtxt").write_text(templates().get_template("ensemble.pbtxt.j2").render(**e))
        (root / e["name"] / "labels.txt").write_text(labels)
    pre, post, det = root / s.preprocess / "1", root / s.postprocess / "1", root / s.detector / "1"
    if s.preprocess_in == "detector":  # the detector takes the images: its folder gets the preprocess's files
        shutil.rmtree(root / s.preprocess, ignore_errors=True)  # re-rendering a repository with a preprocess model
        pre = det
    else:
        shutil.copy(TEMPLATES / "preprocess" / "model.py", pre / "model.py")
        (det / "resize.onnx").unlink(missing_ok=True)  # re-rendering a repository that had --preprocess-in detector
    (pre / "resize.onnx").unlink(missing_ok=True)  # re-rendering a GPU repository for the CPU
    if s.preprocess_device == "gpu":
        from .resize_graph import write_resize_onnx

        write_resize_onnx(pre / "resize.onnx", s.letterbox_fill)
    if s.nms == "detector":  # the detector does the postprocess's work: its spec and labels go there
        shutil.rmtree(root / s.postprocess, ignore_errors=True)  # re-rendering a three-model repository
        post = det
    else:
        shutil.copy(TEMPLATES / "postprocess" / "model.py", post / "model.py")
        (det / "spec.json").unlink(missing_ok=True)  # re-rendering a repository that had --nms detector
        (root / s.detector / "labels.txt").unlink(missing_ok=True)
    (post / "spec.json").write_text(spec.to_json())
    (post.parent / "labels.txt").write_text(labels)
    python_folders = {pre, post}
    if s.target == "python":
        shutil.copy(TEMPLATES / "detector_python" / "model.py", det / "model.py")
        python_folders.add(det)
        (det / "candidates.onnx").unlink(missing_ok=True)  # re-rendering with --decode postprocess
        if s.decode == "detector":
            from .candidates_graph import write_candidates_onnx

            write_candidates_onnx(det / "candidates.onnx", spec)
    for folder in python_folders | {det}:  # the runtime package, whole, where a model.py imports it
        shutil.rmtree(folder / "runtime", ignore_errors=True)
        if folder in python_folders:
            shutil.copytree(RUNTIME_DIR, folder / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # What was rendered, so the repository can be re-rendered (tuning) without re-exporting the model.
    (root / "settings.json").write_text(json.dumps(asdict(s), indent=2) + "\n")


def resolve_decode(requested: str, s: RepositorySettings, spec: DetectorSpec) -> str:
    """--decode auto: in the detector when it is the Python detector on the GPU and the model has raw heads
    (the heads then stay on the GPU and only the top-K candidates cross to the host), else in the postprocess."""
    if requested != "auto":
        return requested
    return "detector" if s.target == "python" and s.detector_device == "gpu" and spec.heads else "postprocess"


def resolve_engine(requested: str, s: RepositorySettings, spec: DetectorSpec) -> str:
    """--engine auto: torch for the Python detector on the GPU when it decodes raw heads itself and runs whole
    batches (2.4-2.6x ONNX Runtime's images/s on the H200, docs/gpu-host.md); else ONNX Runtime."""
    if requested != "auto":
        return requested
    torch = s.target == "python" and s.detector_device == "gpu" and s.decode == "detector" and not spec.per_image
    return "torch" if torch else "ort"


def resolve_nms(requested: str, s: RepositorySettings) -> str:
    """--nms auto: in the detector when the Python detector on the GPU decodes its heads itself (one model
    fewer per request: less server CPU per image, measured in docs/gpu-host.md), else in the postprocess."""
    if requested != "auto":
        return requested
    return "detector" if s.decode == "detector" and s.detector_device == "gpu" else "postprocess"


def resolve_preprocess_in(requested: str, s: RepositorySettings) -> str:
    """--preprocess-in auto: in the detector when the Python detector on the GPU also runs NMS and the images are
    decoded on the GPU (one model per request: more images/s and less server CPU per image than two models,
    measured in docs/gpu-host.md), else in the preprocess model."""
    if requested != "auto":
        return requested
    return "detector" if s.nms == "detector" and s.detector_device == "gpu" and s.preprocess_device == "gpu" \
        else "preprocess"


def spec_path(root: Path, name: str = "yolov4") -> Path:
    """The spec.json of a rendered repository: beside the model that runs NMS (postprocess, or detector)."""
    for model in (f"{name}_postprocess", f"{name}_detector"):
        path = Path(root) / model / "1" / "spec.json"
        if path.is_file():
            return path
    raise RepositoryError(f"{root}: no {name}_postprocess/1/spec.json or {name}_detector/1/spec.json")


def auto_instances(cores: int, gpus: int, preprocess_device: str, detector_on_gpu: bool,
                   nms_in_detector: bool = False, preprocess_in_detector: bool = False,
                   heavy: bool = False) -> tuple[int, int, int, str]:
    """(preprocess, detector, postprocess) instance counts for a serving host, and why.

    Measured basis: on 2 cores, 2 preprocess + 2 single-thread detectors + 1 postprocess was the best
    CPU setting (make tune); on the 16-core H100 host the CPU-decoding preprocess was the wall at 2
    instances (5.4 ms CPU per image each) and 12 fed the GPU detector four times as fast; the
    postprocess costs about a seventh of the CPU preprocess per image. With the GPU preprocess
    (yolov4-tiny, H100, docs/results/gpu-h100-nms-in-detector.md): 3 preprocess per GPU served as
    many images as 4 with less CPU each; the detector was the wall at 2 per GPU, 3 per GPU fed the
    GPU with the postprocess model, 4 when the detector also runs NMS (its CPU time per batch grows).
    When the detector is the whole pipeline (--preprocess-in detector), each instance decodes, runs the
    network and NMS in turn: 6 per GPU fed the H100 on yolov4-tiny where 4 did not
    (docs/results/gpu-h100-preprocess-in-detector.md); on the 16-core H200 with batches of up to 32, 8 served
    4,434 img/s, 12 served 4,933 and 16 served 4,634 in one run (docs/results/gpu-h200-instances.md): each
    instance's stream waits on the shared hardware JPEG decoder, and past 12 the waits grow faster than the
    overlap. So three per four cores of a GPU, at least 4 and at most 12. A `heavy` network (three YOLO heads
    or more, as full YOLOv4, or heads not known) is the GPU's wall, not the decode: YOLOv4 608 served the same
    512 img/s with 4 or 6 (docs/results/gpu-h200-608.md), so at most 6 there, the count measured and loaded.

    Counts of KIND_GPU models are per GPU: Triton's instance_group `count` creates that many instances on
    each GPU it lists, and on every visible GPU when it lists none (as rendered here, so a repository built
    for G GPUs also loads on a host with another number). The CPU counts are totals.
    """
    cores, gpus = max(1, cores), max(0, gpus)
    on_each = f"per GPU, on each of the {gpus} GPUs" if gpus > 1 else "per GPU"
    if detector_on_gpu and gpus and preprocess_in_detector:  # the preprocess and postprocess are not rendered
        most = 6 if heavy else 12
        each = min(most, max(4, cores // gpus * 3 // 4))
        return 1, each, 1, (f"{cores} cores, {gpus} GPUs: the detector is the whole pipeline (decode, resize, "
                            f"network, NMS), three per four cores of each GPU, 4 to {most}"
                            f"{' (a network of three heads: the GPU is its wall)' if heavy else ''}: {each} {on_each}")
    if detector_on_gpu and gpus:
        detector = 4 if nms_in_detector else 3  # per GPU: one runs while the others gather, copy out, NMS
        post = 1 if nms_in_detector else max(1, cores // 4)  # not rendered when the detector does NMS
        where = "the detector does NMS" if nms_in_detector else "postprocess on the CPU: cores/4"
        if preprocess_device == "gpu":  # the GPU decodes; each instance is a process with its own CUDA context
            pre = 3
            why = f"GPU preprocess 3 and detector {detector} {on_each}; {where}"
        else:
            pre = max(1, cores - cores // 4 - 1)
            why = (f"CPU JPEG decode feeds the GPU detector: every core but a quarter and one (server); detector "
                   f"{detector} {on_each}; {where}")
    else:
        detector, pre, post = max(2, cores // 2), max(2, cores // 4), max(1, cores // 8)
        why = "CPU detector: half the cores as single-thread detectors, a quarter preprocess, an eighth postprocess"
    return pre, detector, post, f"{cores} cores, {gpus} GPUs: {why}"


def read_settings(root: Path) -> RepositorySettings:
    path = root / "settings.json"
    if not path.is_file():
        raise RepositoryError(f"{root}: no settings.json (built by an older build_repo.py?): rebuild it")
    return RepositorySettings(**json.loads(path.read_text()))


# --------------------------------------------------------------------------- validation

def _parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(), cfg)
    except text_format.ParseError as e:
        raise RepositoryError(f"{path}: not a valid Triton ModelConfig: {e}") from e
    if cfg.name != path.parent.name:
        raise RepositoryError(f"{path}: name {cfg.name!r} differs from its folder {path.parent.name!r}")
    return cfg


def validate_repository(root: Path, allow_pending_plan: bool = False) -> dict:
    """Parse every config.pbtxt with Triton's protobuf and check each ensemble step's tensors exist and match.

    `allow_pending_plan`: a tensorrt_plan model may lack model.plan while model.onnx and the rendered
    build_plan.sh that makes it are there (the plan is built on the serving host).
    """
    from tritonclient.grpc import model_config_pb2

    configs = {p.parent.name: _parse(p) for p in sorted(root.glob("*/config.pbtxt"))}
    if not configs:
        raise RepositoryError(f"{root}: no models")
    dtype = model_config_pb2.DataType.Name
    for name, cfg in configs.items():
        if not (root / name / "1").is_dir():
            raise RepositoryError(f"{name}: missing version folder 1/")
        for t in list(cfg.output):
            if t.label_filename and not (root / name / t.label_filename).is_file():
                raise RepositoryError(f"{name}: label file {t.label_filename} is missing")
        if cfg.platform != "ensemble":
            if cfg.backend == "python" and not (root / name / "1" / "model.py").is_file():
                raise RepositoryError(f"{name}: python backend without 1/model.py")
            for key in ("model_file", "candidates_file"):
                model_file = cfg.parameters[key].string_value if key in cfg.parameters else ""
                if model_file and not (root / name / "1" / model_file).is_file():
                    raise RepositoryError(f"{name}: parameter {key} names 1/{model_file}, which is missing")
            if cfg.default_model_filename and not (root / name / "1" / cfg.default_model_filename).is_file():
                pending = (allow_pending_plan and cfg.platform == "tensorrt_plan" and (root / "build_plan.sh").is_file()
                           and (root / name / "1" / "model.onnx").is_file())
                if not pending:
                    raise RepositoryError(f"{name}: missing 1/{cfg.default_model_filename}")
            continue
        # Ensemble: walk the steps; every tensor read must come from the ensemble input or an earlier step.
        avail = {t.name: (dtype(t.data_type), list(t.dims)) for t in cfg.input}
        for step in cfg.ensemble_scheduling.step:
            member = configs.get(step.model_name)
            if member is None:
                raise RepositoryError(f"{name}: step uses unknown model {step.model_name!r}")
            if member.max_batch_size < cfg.max_batch_size:
                raise RepositoryError(f"{name}: max_batch_size {cfg.max_batch_size} exceeds {step.model_name}'s "
                                      f"{member.max_batch_size}")
            m_in = {t.name: (dtype(t.data_type), list(t.dims), t.optional) for t in member.input}
            m_out = {t.name: (dtype(t.data_type), list(t.dims)) for t in member.output}
            for model_tensor, ens_tensor in step.input_map.items():
                if model_tensor not in m_in:
                    raise RepositoryError(f"{name}: {step.model_name} has no input {model_tensor!r}")
                if ens_tensor not in avail:
                    raise RepositoryError(f"{name}: tensor {ens_tensor!r} for {step.model_name} is produced by no earlier step")
                if avail[ens_tensor] != m_in[model_tensor][:2]:
                    raise RepositoryError(f"{name}: {ens_tensor!r} is {avail[ens_tensor]} but {step.model_name}."
                                          f"{model_tensor} wants {m_in[model_tensor][:2]}")
            missing = [n for n, (_, _, opt) in m_in.items() if not opt and n not in step.input_map]
            if missing:
                raise RepositoryError(f"{name}: {step.model_name} inputs {missing} are not mapped")
            for model_tensor, ens_tensor in step.output_map.items():
                if model_tensor not in m_out:
                    raise RepositoryError(f"{name}: {step.model_name} has no output {model_tensor!r}")
                if ens_tensor in avail:  # Triton refuses to load such an ensemble
                    raise RepositoryError(f"{name}: ensemble tensor {ens_tensor!r} is produced twice "
                                          f"(again by {step.model_name})")
                avail[ens_tensor] = m_out[model_tensor]
        for t in cfg.output:
            if t.name not in avail:
                raise RepositoryError(f"{name}: output {t.name!r} is produced by no step")
            if avail[t.name] != (dtype(t.data_type), list(t.dims)):
                raise RepositoryError(f"{name}: output {t.name!r} is {avail[t.name]}, declared "
                                      f"{(dtype(t.data_type), list(t.dims))}")
    return configs
