"""GPU preprocess: encoded images -> network input that stays on the GPU. Used by the preprocess model
when it runs on a GPU instance (copied into its folder beside images.py).

- Limits are checked from each file's header first (images.image_size), exactly as on the CPU path.
- All JPEGs of a dynamic batch are decoded in one nvImageCodec call, on the GPU's hardware JPEG
  decoder where it has one and CUDA nvJPEG elsewhere. PNG/BMP, and any JPEG the GPU decoders
  return nothing for, are decoded on the CPU (images.decode) for that image only; an image neither
  can decode fails its own request, never the batch.
- resize.onnx (see yolotriton/resize_graph.py) runs on ONNX Runtime's CUDA provider and writes
  each image straight into its slot of the request's output batch (IO binding): no host copy.
- One CUDA stream per instance carries the decode and the resize in order; it is synchronized once
  per execute, before the outputs are handed to Triton through DLPack.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from . import images, stage_times
ImageError = images.ImageError


def _cuda_check(result):
    err, *rest = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return rest[0] if len(rest) == 1 else rest


def geometry(orig_w: int, orig_h: int, net_w: int, net_h: int, mode: str):
    """(sizes input, pads input, meta) for resize.onnx: the same boxes arithmetic as images.resize."""
    if mode == "stretch":
        nw, nh, top, left = net_w, net_h, 0, 0
        meta = (orig_h, orig_w, net_h / orig_h, net_w / orig_w, 0.0, 0.0)
    elif mode == "letterbox":
        scale = min(net_w / orig_w, net_h / orig_h)
        nw, nh = max(1, round(orig_w * scale)), max(1, round(orig_h * scale))
        left, top = (net_w - nw) // 2, (net_h - nh) // 2
        meta = (orig_h, orig_w, nh / orig_h, nw / orig_w, float(top), float(left))
    else:
        raise ValueError(f"resize mode {mode!r}: expected stretch or letterbox")
    sizes = np.array([1, 3, nh, nw], np.int64)
    pads = np.array([0, top, left, 0, 0, net_h - nh - top, net_w - nw - left, 0], np.int64)
    return sizes, pads, np.asarray(meta, np.float32)


class Resizer:
    """resize.onnx on one device; `into(image, out_ptr, ...)` writes one resized image at out_ptr."""

    def __init__(self, resize_onnx: str, net_w: int, net_h: int, mode: str, device: str = "cuda",
                 device_id: int = 0, stream: int = 0):
        self.net_w, self.net_h, self.mode = net_w, net_h, mode
        self.device, self.device_id = device, device_id
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if device == "cuda":
            cuda = {"device_id": device_id}
            if stream:
                cuda["user_compute_stream"] = str(stream)
            providers = [("CUDAExecutionProvider", cuda)]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(resize_onnx, opts, providers=providers)
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"ONNX Runtime here lacks the CUDA provider (has {ort.get_available_providers()})")
        self.binding = self.session.io_binding()
        # No stream synchronize at the end of each image's run: the caller synchronizes once per batch.
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        # Named, not left out: ONNX Runtime's Python run_with_iobinding (1.31) looks this key up on every run and a
        # missing one costs a C++ exception, 40-60 us a lookup here and a tenth of the 608 stubs' CPU on the H100.
        # -1 means no CUDA graph for this small graph.
        self.run_options.add_run_config_entry("gpu_graph_id", "-1")
        self.slot_bytes = net_h * net_w * 3 * 4

    def into(self, image, orig_wh: tuple[int, int], out_ptr: int) -> np.ndarray:
        """Resize one RGB uint8 image (a numpy array, or GPU memory with __cuda_array_interface__) into
        the float32 [net_h, net_w, 3] slot at device address out_ptr; returns the image's meta."""
        # The geometry comes from the original size; a CPU fallback decoded at reduced scale resizes to the same.
        sizes, pads, meta = geometry(*orig_wh, self.net_w, self.net_h, self.mode)
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        if isinstance(image, np.ndarray):
            b.bind_cpu_input("image", np.ascontiguousarray(image))
        else:
            cai = image.__cuda_array_interface__
            h, w, c = cai["shape"]
            if cai.get("strides") not in (None, (w * c, c, 1)):
                raise ImageError(f"decoded image has a pitched layout {cai['strides']}: not supported")
            b.bind_input("image", "cuda", self.device_id, np.uint8, [h, w, c], cai["data"][0])
        b.bind_cpu_input("sizes", sizes)
        b.bind_cpu_input("pads", pads)
        b.bind_output("resized", self.device, self.device_id, np.float32, [1, self.net_h, self.net_w, 3], out_ptr)
        self.session.run_with_iobinding(b, self.run_options)
        return meta


class GpuPreprocessor:
    """Decode (nvImageCodec) + resize (ONNX Runtime CUDA) for a list of requests' encoded images."""

    def __init__(self, resize_onnx: str, net_w: int, net_h: int, mode: str, max_pixels: int, max_bytes: int,
                 device_id: int = 0, cuda_wait: str = "spin", decode_batch: int = 0):
        from cuda.bindings import runtime as cudart
        from nvidia import nvimgcodec

        self.cudart, self.device_id = cudart, device_id
        self.decode_batch = decode_batch  # JPEGs per decode call; 0: all of the dynamic batch in one
        self.net_w, self.net_h, self.mode = net_w, net_h, mode
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        _cuda_check(cudart.cudaSetDevice(device_id))
        if cuda_wait == "block":  # the stream synchronize sleeps instead of spinning a core
            _cuda_check(cudart.cudaSetDeviceFlags(cudart.cudaDeviceScheduleBlockingSync))
        self.stream = int(_cuda_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)))
        self.resizer = Resizer(resize_onnx, net_w, net_h, mode, "cuda", device_id, self.stream)
        kinds = nvimgcodec.BackendKind
        # GPU backends only: a JPEG none of them decodes goes to images.decode (libjpeg-turbo), as on the CPU path.
        self.decoder = nvimgcodec.Decoder(
            device_id=device_id,
            backends=[nvimgcodec.Backend(kinds.HW_GPU_ONLY), nvimgcodec.Backend(kinds.GPU_ONLY)],
            # Huffman decoding on the GPU too: same throughput as nvJPEG's default CPU Huffman for small
            # images on an H100 (1058 vs 1041 img/s), with the CPU left to the server
            options="nvjpeg_cuda_decoder:hybrid_huffman_threshold=0")
        # No EXIF rotation: the CPU path (libjpeg-turbo) does not rotate either, so both give the same boxes.
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                              allow_any_depth=False,
                                              sample_format=nvimgcodec.SampleFormat.I_RGB)
        self.nvimgcodec = nvimgcodec
        self.times = stage_times.OFF  # the stub sets a StageTimes to measure decode and resize under load

    def __call__(self, requests: list[list[bytes]]):
        """Per request: (OrtValue float32 [n, H, W, 3] on the GPU, meta [n, 6]) or the ImageError it failed with."""
        checked: list[list] = []  # per request, per image: (data, fmt, (w, h)) or an ImageError
        jpegs = []
        for items in requests:
            row = []
            for i, data in enumerate(items):
                try:
                    if len(data) > self.max_bytes:
                        raise ImageError(f"image is {len(data):,} bytes, above the limit of {self.max_bytes:,} (max_bytes)")
                    fmt, w, h = images.image_size(data)
                    images.check_limits(w, h, self.max_pixels)
                    row.append([data, fmt, (w, h), None])
                    if fmt == "jpeg":
                        jpegs.append(row[-1])
                except ImageError as e:
                    row.append(e.in_request(i, len(items)))
            checked.append(row)
        step = self.decode_batch or len(jpegs)
        for start in range(0, len(jpegs), max(step, 1)):
            chunk = jpegs[start:start + step]
            streams = [self.nvimgcodec.CodeStream(item[0]) for item in chunk]
            for item, img in zip(chunk, self.decoder.decode(streams, params=self.params, cuda_stream=self.stream)):
                item[3] = img
        self.times.mark("decode", self.stream)
        results, keep = [], []
        for row in checked:
            err = next((x for x in row if isinstance(x, ImageError)), None)
            if err is not None:
                results.append(err)
                continue
            out = ort.OrtValue.ortvalue_from_shape_and_type([len(row), self.net_h, self.net_w, 3], np.float32,
                                                            "cuda", self.device_id)
            meta = np.empty((len(row), 6), np.float32)
            try:
                for i, (data, fmt, wh, img) in enumerate(row):
                    if img is None:  # PNG/BMP, or a JPEG the GPU could not decode: the CPU decoder's turn
                        img, wh = images.decode(data, self.net_w, self.net_h, self.max_pixels, self.max_bytes)
                        img = np.array(img)  # own the pixels: the CPU decoder reuses its buffer
                    keep.append(img)  # alive until the stream is synchronized
                    meta[i] = self.resizer.into(img, wh, out.data_ptr() + i * self.resizer.slot_bytes)
            except ImageError as e:
                results.append(e.in_request(i, len(row)))
                continue
            results.append((out, meta))
        self.times.mark("resize", self.stream)
        _cuda_check(self.cudart.cudaStreamSynchronize(self.stream))
        return results
