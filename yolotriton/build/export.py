"""Export stage: ImportedDetector -> TensorFlow SavedModel -> ONNX (tf2onnx), gated on parity.

Entry point: `export_onnx(detector, onnx_path, workdir, opset, parity_images)`.
The ONNX graph always has input `images` [batch, H, W, 3] float32 (RGB, [0,1]) and one output per
spec name (`head_0`.. or `detections` / `boxes`,`scores`), whatever names tf2onnx chose.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .detector import ImportedDetector
from ..runtime.ort_engine import pad_stack
from .spec import INPUT_NAME

PARITY_RTOL = 1e-4  # max|diff| <= 1e-4 * max(1, max|keras|), per output
TF2ONNX_PHASES = ("Using opset", "Optimizing ONNX model", "After optimization", "Successfully converted")


class ExportError(RuntimeError):
    """Conversion failed or the ONNX model disagrees with the source model."""


class ConverterKilled(ExportError):
    """The converter child was ended by a signal (the OOM killer's SIGKILL above all)."""


@dataclass
class ParityReport:
    per_output: dict[str, tuple[float, float, float]]  # name -> (max|diff|, max|keras|, allowed)
    onnx_outputs: dict[str, np.ndarray]  # what ONNX Runtime computed on the parity images (the layout gate reads them)

    @property
    def ok(self) -> bool:
        return all(d <= allowed for d, _, allowed in self.per_output.values())

    def lines(self) -> list[str]:
        return [f"  {n}: max|diff| {d:.3g} (max|keras| {m:.3g}, allowed {a:.3g}) {'ok' if d <= a else 'FAIL'}"
                for n, (d, m, a) in self.per_output.items()]


def save_savedmodel(det: ImportedDetector, path: Path) -> None:
    import tensorflow as tf

    spec = det.spec
    names = spec.output_names

    @tf.function(input_signature=[tf.TensorSpec([None, spec.input_height, spec.input_width, 3], tf.float32,
                                                name=INPUT_NAME)])
    def serve(images):
        return {n: tf.identity(t, name=n) for n, t in zip(names, det(images))}

    module = tf.Module()
    module.model = det.trackable if det.trackable is not None else det.model  # keeps the variables
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def convert_savedmodel(saved: Path, onnx_path: Path, opset: int, log) -> None:
    """tf2onnx's documented command line, in a child process (its TF graph stays out of ours).

    Its memory (docs/benchmarks.md, "Conversion memory"): `--large_model` keeps the weights out of the TF graph it
    freezes and optimizes, and protobuf's pure-Python messages (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python, for
    the child only) let each of its ONNX optimizer passes free the node attributes it rewrites: with the default
    upb messages every pass left a copy of all weights in their arena (YOLOv4 608 peaked at 14.3 GB; 2.1 GB this
    way, in a third of the time, the same ONNX to the bit). Its zip (model + external data) is joined back into one
    file. Where the large-model path fails, the ordinary path (still pure-Python messages) is tried once, said.
    """
    zipped = onnx_path.with_name(onnx_path.name + ".zip")
    try:
        _run_tf2onnx(saved, zipped, opset, log, large_model=True)
    except ConverterKilled:
        raise
    except ExportError as e:
        log(f"  tf2onnx --large_model failed ({str(e).splitlines()[-1][:160]}); converting again without it, "
            "which needs more memory")
        _run_tf2onnx(saved, onnx_path, opset, log, large_model=False)
        return
    try:
        _join_external_data(zipped, onnx_path)
    finally:
        zipped.unlink(missing_ok=True)


def _join_external_data(zipped: Path, onnx_path: Path) -> None:
    """tf2onnx's large-model zip (one .onnx and each external tensor as an entry named by its location) as one
    self-contained model file. Read from the zip, not extracted: a location is a TF tensor name, which in the TF2
    packages' deep models runs past the file system's 255-byte limit on a file name."""
    import zipfile

    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    with zipfile.ZipFile(zipped) as z:
        models = [n for n in z.namelist() if n.endswith(".onnx")]
        if len(models) != 1:
            raise ExportError(f"tf2onnx's large-model zip holds {len(models)} .onnx files, expected 1")
        model = onnx.load_model_from_string(z.read(models[0]))
        for tensor in _tensors(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = ExternalDataInfo(tensor)
            data = z.read(info.location)
            start = info.offset or 0
            tensor.raw_data = data[start:start + info.length] if info.length else data[start:]
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    onnx.save(model, str(onnx_path))


def _tensors(graph):
    """Every tensor a graph holds: its initializers and its nodes' tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def _run_tf2onnx(saved: Path, out: Path, opset: int, log, large_model: bool) -> None:
    """One tf2onnx child; its phase lines passed through, and a heartbeat every 20 s shows a long conversion is
    alive."""
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--output", str(out),
           "--opset", str(opset), "--signature_def", "serving_default"] + (["--large_model"] if large_model else [])
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    start, done = time.perf_counter(), threading.Event()

    def heartbeat():
        while not done.wait(20):
            log(f"  tf2onnx: still converting ({time.perf_counter() - start:.0f}s)")

    threading.Thread(target=heartbeat, daemon=True).start()
    tail: list[str] = []
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-30:]
            msg = line.split(" - INFO - ", 1)[-1].strip() if " - INFO - " in line else ""
            if msg.startswith(TF2ONNX_PHASES):
                log(f"  tf2onnx: {msg[:120]} ({time.perf_counter() - start:.0f}s)")
        code = proc.wait()
    finally:
        done.set()
        if proc.poll() is None:  # interrupted: do not leave the converter running
            proc.kill()
            proc.wait()
    peak = _child_peak_gb()
    if code < 0:  # killed by a signal: the OOM killer's SIGKILL above all; its own last lines would not say so
        weights = sum(f.stat().st_size for f in (saved / "variables").glob("*") if f.is_file()) / 1e9
        raise ConverterKilled(converter_killed(-code, peak, weights))
    if code != 0:
        raise ExportError("tf2onnx failed:\n" + "\n".join(tail))
    log(f"  tf2onnx: peak memory {peak:.1f} GB (its process; this machine has {_machine_gb():.0f} GB)")


def _child_peak_gb() -> float:
    """The largest resident set of any child this process waited for (the converter), in GB (Linux: ru_maxrss KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2


def _machine_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3


def converter_killed(signum: int, peak_gb: float, weights_gb: float = 0.0) -> str:
    """The one-line reason for a converter that a signal ended."""
    import signal

    name = signal.Signals(signum).name if signum in {s.value for s in signal.Signals} else f"signal {signum}"
    need = (f"this model's weights are {weights_gb:.2f} GB and its conversion needs about 8 times that, "
            if weights_gb else "")
    hint = ("SIGKILL is what the kernel's OOM killer sends when memory runs out (dmesg shows it): close other jobs, "
            f"or convert on a machine with more memory ({need}tf2onnx peaks at 2.0 GB for the official YOLOv4 608 "
            "and 2.8 GB for a 100 M-parameter Scaled-YOLOv4, docs/benchmarks.md)" if signum == 9
            else "it was stopped from outside")
    return (f"tf2onnx was killed by {name} after reaching {peak_gb:.1f} GB resident, on a machine of "
            f"{_machine_gb():.0f} GB: {hint}")


def name_tensors(onnx_path: Path, det: ImportedDetector) -> None:
    """Give the graph the stable names the repository relies on and a named dynamic batch dimension."""
    import onnx

    model = onnx.load(str(onnx_path))
    g = model.graph
    want = list(det.spec.output_names)
    rename: dict[str, str] = {}
    if len(g.input) != 1:
        raise ExportError(f"exported graph has {len(g.input)} inputs, expected 1")
    rename[g.input[0].name] = INPUT_NAME
    got = [o.name for o in g.output]
    if len(got) != len(want):
        raise ExportError(f"exported graph has outputs {got}, expected {want}")
    for o in got:  # tf2onnx names outputs after the signature keys; accept ':0' suffixes too
        base = o.split(":")[0]
        if base not in want:
            raise ExportError(f"exported output {o!r} is not one of {want}")
        rename[o] = base
    for node in g.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for vi in list(g.input) + list(g.output):
        vi.name = rename.get(vi.name, vi.name)
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    order = {n: i for i, n in enumerate(want)}
    outs = sorted(g.output, key=lambda v: order[v.name])
    del g.output[:]
    g.output.extend(outs)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(onnx_path))


def free_output_dims(onnx_path: Path) -> dict[str, list]:
    """Outputs whose per-image dims are not fixed in the exported graph (name -> its dims, '?' where free)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    free = {}
    for o in model.graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else "?" for d in o.type.tensor_type.shape.dim][1:]
        if "?" in dims:
            free[o.name] = dims
    return free


def shape_depends_on_image(onnx_path: Path, images: np.ndarray) -> bool:
    """Whether outputs with open dims take another shape on another image: the parity images run as one batch
    (a graph that filters across the batch fails there) and one at a time (their shapes must all agree)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    try:
        batched = [o.shape[1:] for o in sess.run(None, {INPUT_NAME: images})]
    except Exception:  # noqa: BLE001 -- ONNX Runtime's Fail: e.g. a Reshape of rows filtered over the batch
        return True
    return any([o.shape[1:] for o in sess.run(None, {INPUT_NAME: images[i:i + 1]})] != batched
               for i in range(len(images)))


def check_parity(det: ImportedDetector, onnx_path: Path, images: np.ndarray, per_image: bool = False) -> ParityReport:
    """ONNX Runtime vs the source model on the parity images; with per_image, one image per call (a model
    whose output shape depends on the image cannot run a batch of two)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    if per_image:
        got_each = [dict(zip(names, sess.run(None, {INPUT_NAME: images[i:i + 1]}))) for i in range(len(images))]
        ref_each = [det.predict(images[i:i + 1]) for i in range(len(images))]
        for i, (g, r) in enumerate(zip(got_each, ref_each)):
            for name in r:
                if g[name].shape != r[name].shape:
                    raise ExportError(f"ONNX output {name} has shape {g[name].shape} on parity image {i}, the source "
                                      f"model {r[name].shape}")
        got, ref = pad_stack(got_each), pad_stack(ref_each)
    else:
        got = dict(zip(names, sess.run(None, {INPUT_NAME: images})))
        ref = det.predict(images, batch_size=1)  # one image at a time: the build's memory peak (issue #33)
    report = {}
    for name, r in ref.items():
        g = got[name]
        if g.shape != r.shape:
            raise ExportError(f"ONNX output {name} has shape {g.shape}, Keras {r.shape}")
        m = float(np.abs(r).max())
        report[name] = (float(np.abs(g - r).max()), m, PARITY_RTOL * max(1.0, m))
    return ParityReport(report, got)


def export_onnx(det: ImportedDetector, onnx_path: Path, workdir: Path, opset: int, parity_images: np.ndarray,
                log=print) -> ParityReport:
    if opset < 13:
        raise ExportError(f"opset {opset}: need 13 or newer")
    if len(parity_images) < 2:
        raise ExportError("the parity gate needs at least 2 images")
    saved = workdir / "saved_model"
    t = time.perf_counter()
    save_savedmodel(det, saved)
    log(f"[export] SavedModel written in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    convert_savedmodel(saved, onnx_path, opset, log)
    name_tensors(onnx_path, det)
    log(f"[export] ONNX (opset {opset}) written and checked in {time.perf_counter() - t:.1f}s")
    free = free_output_dims(onnx_path)
    if free and not det.spec.heads and shape_depends_on_image(onnx_path, parity_images):
        det.spec = dataclasses.replace(det.spec, per_image=True)
        log(f"[export] outputs {', '.join(f'{k} {v}' for k, v in free.items())} change shape with the image: each "
            "image is run alone and its outputs padded with zero rows, so no request depends on another")
    t = time.perf_counter()
    report = check_parity(det, onnx_path, parity_images, per_image=det.spec.per_image)
    log(f"[export] parity, Keras vs ONNX Runtime on {len(parity_images)} images ({time.perf_counter() - t:.1f}s):")
    for line in report.lines():
        log(line)
    if not report.ok:
        raise ExportError("ONNX output differs from the Keras model beyond the parity tolerance:\n" + "\n".join(report.lines()))
    return report
