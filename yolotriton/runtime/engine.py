"""The detector's network engines behind one interface, and the choice between them at load.

An engine runs model.onnx (and candidates.onnx, the on-GPU decode, where the folder has one) for batches of
1..max_batch images. Every engine has:
- `input_name`, `input_shape` (per image) and `output_names`;
- `engine(parts)`: the batch made of the requests' parts (numpy arrays, or ONNX Runtime values on the host or
  the device) -> its outputs on the host, in output_names order;
- `providers`: what runs it, for the load log; `times` (stage_times), and on a GPU `cudart` and `stream`.

Engines (ENGINES): "ort", ONNX Runtime on the CPU or CUDA (ort_engine.OrtEngine); "torch", the same ONNX run by
PyTorch: inductor-compiled, FP16 NHWC, one CUDA graph per batch bucket (torch_engine.TorchEngine, GPU only).
Where "torch" cannot load (torch or onnx2torch missing, or the model not convertible), `open_engine` says so in
one log line and ONNX Runtime runs the model. On a GPU, the engine that will serve is checked first against the
FP32 ONNX's detections on the build's photos (gate.py): torch failing gives ONNX Runtime (checked the same way),
and a model whose serving engine fails does not load, with one line.
"""
from __future__ import annotations

from typing import Callable

ENGINES = ("ort", "torch")


def open_engine(kind: str, model_dir: str, model_file: str = "model.onnx", candidates_file: str | None = None, *,
                max_batch: int, cuda: bool = False, device_id: int = 0, intra_op_threads: int = 1,
                cuda_wait: str = "block", cuda_graphs: bool = True, per_image: bool = False, gate: bool | None = None,
                log: Callable[[str], None] = print):
    """The engine `kind` for the model in `model_dir`; model_file is the ONNX Runtime file (model.fp16.onnx where
    the build's FP16 gate passed), which also sets the torch engine's precision (it converts model.onnx).

    gate (default: on a GPU): the engine that will serve runs the build's gate photos (gate.npz) first and is held
    to the FP32 ONNX's detections on them. Where torch fails, one log line and ONNX Runtime serves, held to the same
    gate; where the engine that would serve fails, the model does not load (gate.GateFailed, one line)."""
    opened = lambda k: _open(k, model_dir, model_file, candidates_file, max_batch=max_batch, cuda=cuda,
                             device_id=device_id, intra_op_threads=intra_op_threads, cuda_wait=cuda_wait,
                             cuda_graphs=cuda_graphs, per_image=per_image, log=log)
    engine = opened(kind)
    if not (cuda if gate is None else gate):
        return engine
    from .gate import GateFailed, check_engine

    try:
        check_engine(engine, model_dir, from_candidates=bool(candidates_file), log=log)
    except GateFailed as e:
        if engine.name != "torch":
            raise
        log(f"{e.finding}: ONNX Runtime runs the network instead")
        engine = opened("ort")
        check_engine(engine, model_dir, from_candidates=bool(candidates_file), log=log)
    return engine


def _open(kind, model_dir, model_file, candidates_file, *, max_batch, cuda, device_id, intra_op_threads, cuda_wait,
          cuda_graphs, per_image, log):
    import os

    from .ort_engine import OrtEngine

    if kind not in ENGINES:
        raise ValueError(f"engine {kind!r}: expected one of {', '.join(ENGINES)}")
    path = lambda name: os.path.join(model_dir, name) if name else None
    if kind == "torch":
        try:
            from .torch_engine import TorchEngine
        except ImportError as e:
            log(f"engine torch unavailable here ({e}): ONNX Runtime runs the network instead "
                "(install the torch and onnx2torch of docs/gpu-host.md into the stub's environment)")
        else:
            if not cuda or per_image:
                log("engine torch runs on a GPU instance with whole batches only: ONNX Runtime runs this model")
            else:
                try:
                    return TorchEngine(path("model.onnx"), path(candidates_file), max_batch=max_batch,
                                       device_id=device_id, cuda_wait=cuda_wait, half="fp16" in model_file,
                                       graphs=cuda_graphs, log=log)
                except Exception as e:  # noqa: BLE001 -- any conversion or compile failure: serve, and say why
                    log(f"engine torch could not load this model ({type(e).__name__}: {str(e)[:300]}): "
                        "ONNX Runtime runs the network instead")
    return OrtEngine(path(model_file), path(candidates_file), max_batch=max_batch, cuda=cuda, device_id=device_id,
                     intra_op_threads=intra_op_threads, cuda_wait=cuda_wait, cuda_graphs=cuda_graphs,
                     per_image=per_image, log=log)
