"""The hardware's own ceilings for the served pipeline's two GPU stages, each alone at its best (bench/gpu.py).

- `decode_ceiling(blobs)`: nvImageCodec decoding the photos' JPEG bytes, one decoder, with the hardware
  JPEG decoder alone, CUDA nvJPEG alone and both (the hardware decoder with CUDA taking what it leaves,
  load-balanced), at batch sizes 8..128. The images stay on the GPU, the stream is synchronized per
  batch. What the served path must do first for every image, at the library's best here. (Several decoders
  in parallel threads were tried on the H200 and crashed inside nvImageCodec; not measured.)
- `network_ceiling(model, batches)`: the network alone with its input already on the GPU, as the
  server has it: a fixed device input, outputs left on the device, IO binding, one CUDA graph per batch
  size (ONNX Runtime's enable_cuda_graph), replayed back to back on one stream. Optionally followed by
  another graph on the heads (candidates.onnx) to show what the on-GPU decode adds.

Timing: `rounds` of `calls` back-to-back calls each, one synchronize per round; the median round gives
images/s. Nothing here is copied to or from the host inside the timed loop.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

BATCHES = (8, 16, 32, 64, 128)


def median_rate(step, sync, images_per_call: int, seconds: float, calls: int = 10) -> float:
    step()
    sync()
    rounds, start = [], time.perf_counter()
    while len(rounds) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        for _ in range(calls):
            step()
        sync()
        rounds.append(time.perf_counter() - t)
    return images_per_call * calls / statistics.median(rounds)


_DECODERS: list = []


def decode_ceiling(blobs: list[bytes], seconds: float = 1.5, batches=BATCHES, device_id: int = 0,
                   log=print, on_row=lambda row: None) -> list[dict]:
    """Rows {backend, batch, images_per_s} for each backend set and batch size (each also to on_row as measured)."""
    from cuda.bindings import runtime as cudart
    from nvidia import nvimgcodec

    cudart.cudaSetDevice(device_id)
    err, stream = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)
    stream = int(stream)
    kinds = nvimgcodec.BackendKind
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                     allow_any_depth=False, sample_format=nvimgcodec.SampleFormat.I_RGB)
    sets = {
        "hardware decoder": [nvimgcodec.Backend(kinds.HW_GPU_ONLY)],
        "CUDA nvJPEG": [nvimgcodec.Backend(kinds.GPU_ONLY)],
        "hardware + CUDA (adaptive)": [
            nvimgcodec.Backend(kinds.HW_GPU_ONLY,
                               load_hint_policy=nvimgcodec.LoadHintPolicy.ADAPTIVE_MINIMIZE_IDLE_TIME),
            nvimgcodec.Backend(kinds.GPU_ONLY)],
    }
    rows = []
    for name, backends in sets.items():  # each decoder lives as long as the process (_DECODERS): on the H200
        # (2026-12-04) a process crashed after its decode rows, when a decoder was dropped
        try:
            dec = nvimgcodec.Decoder(device_id=device_id, backends=backends,
                                     options="nvjpeg_cuda_decoder:hybrid_huffman_threshold=0")
        except Exception as e:  # noqa: BLE001 -- a backend this GPU lacks: say so, measure the others
            log(f"  decode {name}: unavailable ({str(e)[:200]})")
            continue
        _DECODERS.append(dec)
        for b in batches:
            streams = [nvimgcodec.CodeStream(blobs[i % len(blobs)]) for i in range(b)]
            out = dec.decode(streams, params=params, cuda_stream=stream)
            cudart.cudaStreamSynchronize(stream)
            if any(o is None for o in out):
                log(f"  decode {name} b{b}: {sum(o is None for o in out)} of {b} images not decoded; skipped")
                continue
            keep = []

            def step():
                keep.append(dec.decode(streams, params=params, cuda_stream=stream))

            def sync():
                cudart.cudaStreamSynchronize(stream)
                keep.clear()

            ips = median_rate(step, sync, b, seconds, calls=2)
            rows.append({"backend": name, "batch": b, "images_per_s": ips})
            log(f"  decode alone, {name}, batch {b}: {ips:.0f} img/s")
            on_row(rows[-1])
    return rows  # the stream lives as long as the decoders that used it (the process)


def network_ceiling(model: str, batches=BATCHES, candidates: str | None = None, seconds: float = 1.5,
                    device_id: int = 0, log=print, label: str = "") -> list[dict]:
    """Rows {batch, images_per_s} for the network alone (input on the GPU, CUDA graph) at each batch size;
    with `candidates`, the network then that graph on its heads, both captured."""
    import onnxruntime as ort
    from cuda.bindings import runtime as cudart

    cudart.cudaSetDevice(device_id)
    err, stream = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)
    stream = int(stream)
    cuda = {"device_id": device_id, "cudnn_conv_algo_search": "HEURISTIC", "enable_cuda_graph": "1",
            "user_compute_stream": str(stream)}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    rows = []
    for b in batches:
        try:
            sess = ort.InferenceSession(model, opts, providers=[("CUDAExecutionProvider", cuda)])
            dev = lambda shape: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cuda", device_id)
            shape = [b, *sess.get_inputs()[0].shape[1:]]
            x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(0).random(shape, np.float32), "cuda", device_id)
            binding = sess.io_binding()
            binding.bind_ortvalue_input(sess.get_inputs()[0].name, x)
            heads = {o.name: dev([b, *o.shape[1:]]) for o in sess.get_outputs()}
            for name, v in heads.items():
                binding.bind_ortvalue_output(name, v)
            ro = ort.RunOptions()
            ro.add_run_config_entry("gpu_graph_id", "1")
            ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
            runs = [(sess, binding)]
            if candidates:
                cs = ort.InferenceSession(candidates, opts, providers=[("CUDAExecutionProvider", cuda)])
                cb = cs.io_binding()
                for name, v in heads.items():
                    cb.bind_ortvalue_input(name, v)
                for o in cs.get_outputs():
                    t = np.int32 if o.type == "tensor(int32)" else np.float32
                    cb.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_shape_and_type(
                        [b, *o.shape[1:]], t, "cuda", device_id))
                runs.append((cs, cb))

            def step():
                for s, bd in runs:
                    s.run_with_iobinding(bd, ro)

            sync = lambda: cudart.cudaStreamSynchronize(stream)
            for _ in range(3):  # the first runs of a graph id run normally, then ONNX Runtime captures
                step()
                sync()
            ips = median_rate(step, sync, b, seconds)
        except Exception as e:  # noqa: BLE001 -- e.g. out of memory at a large batch: the sweep stops there
            log(f"  network alone{label} b{b}: failed ({str(e)[:200]})")
            break
        rows.append({"batch": b, "images_per_s": ips})
        log(f"  network alone{label}{' + candidates' if candidates else ''}, input on the GPU, CUDA graph, "
            f"batch {b}: {ips:.0f} img/s")
    cudart.cudaStreamDestroy(stream)
    return rows


def best(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: r["images_per_s"]) if rows else None
