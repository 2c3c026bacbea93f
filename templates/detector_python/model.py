"""Detector on the Python backend: the network on one of runtime/engine.py's engines (for servers without the ONNX
Runtime backend, and on the GPU for the faster engine).

Settings from config.pbtxt parameters: engine ("ort": ONNX Runtime; "torch": PyTorch, compiled, on a GPU instance,
falling back to ONNX Runtime with one log line where it cannot load), intra_op_threads, execution_providers (CUDA
on GPU instances, on the instance's own device), model_file (model.onnx or the gated model.fp16.onnx),
candidates_file (`--decode detector`: candidates.onnx decodes the heads into the top-K candidates right after the
network, on the same device), cuda_wait and cuda_graphs. Requests that the dynamic batcher groups are one engine
call (on the GPU, the replay of that batch size's CUDA graph).

`--nms detector` (parameter nms "on"): this model also does the postprocess's work on its candidates
(detections.Postprocessor: thresholds, class-aware NMS, top-K, per-request overrides) and answers with
the final detections, so the ensemble has no third step to schedule, copy into and wait for.

On a GPU instance whose inputs arrive on the GPU (the GPU preprocess; FORCE_CPU_ONLY_INPUT_TENSORS
"no"), the batch never visits the host: the requests' tensors come in through DLPack and are copied
into the batch on the device.

`--preprocess-in detector` (parameter preprocess "on", with NMS here too): this model is the whole
pipeline. It takes the requests' IMAGE bytes or RAW_IMAGE arrays and preprocesses them itself
(preprocess.RequestPreprocessor, on the GPU on a GPU instance), so no tensor crosses between models.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from runtime.cuda_stream import rows
from runtime.engine import open_engine
from runtime.stage_times import StageTimes


def _host(tensor):
    """A small input as numpy, wherever Triton placed it (inputs are not forced to the CPU on GPU instances)."""
    return tensor.as_numpy() if tensor.is_cpu() else ort.OrtValue.from_dlpack(tensor.to_dlpack()).numpy()


def _invalid(error):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        wanted = params.get("execution_providers", "CPUExecutionProvider").split(",")
        on_gpu = args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in wanted
        if on_gpu and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise pb_utils.TritonModelException("ONNX Runtime here lacks CUDAExecutionProvider (install onnxruntime-gpu)")
        self.preprocess = None
        if params.get("preprocess") == "on":  # first: the GPU preprocess sets how this process waits for CUDA
            from runtime.preprocess import RequestPreprocessor

            self.preprocess = RequestPreprocessor(params, here, int(args.get("model_instance_device_id") or 0),
                                                  pb_utils.Logger.log_warn)
        self.detector = open_engine(
            params.get("engine", "ort"), here, params.get("model_file", "model.onnx"), params.get("candidates_file"),
            max_batch=int(config["max_batch_size"]), cuda=on_gpu,
            device_id=int(args.get("model_instance_device_id") or 0),
            intra_op_threads=int(params.get("intra_op_threads", "1")), cuda_wait=params.get("cuda_wait", "spin"),
            cuda_graphs=params.get("cuda_graphs", "on") == "on", per_image=params.get("per_image") == "on",
            log=pb_utils.Logger.log_warn)
        self.instance = args["model_instance_name"]
        pb_utils.Logger.log_info(f"{self.instance}: engine {self.detector.name} "
                                 f"({', '.join(self.detector.providers)})")
        self.input_name = self.detector.input_name
        # YOLOTRITON_STAGE_TIMES=DIR: CUDA-event times of each stage under load (bench/gpu.py reads them)
        self.times = StageTimes.for_process(self.detector.cudart, self.detector.stream, args["model_instance_name"])
        self.detector.times = self.times
        if self.preprocess is not None and self.preprocess.gpu is not None:
            self.preprocess.gpu.times = self.times
        self.output_names = [o["name"] for o in config["output"]]
        self.post = None
        produced = self.detector.output_names
        if params.get("nms") == "on":
            from runtime.detections import FINAL_OUTPUTS, Postprocessor

            self.post = Postprocessor.in_model_folder(here, params)
            if set(self.post.decoder.output_names) != set(produced):
                raise pb_utils.TritonModelException(f"the postprocess wants {self.post.decoder.output_names}, "
                                                    f"the model gives {produced}")
            produced = FINAL_OUTPUTS
        if set(self.output_names) != set(produced):
            raise pb_utils.TritonModelException(f"config outputs {self.output_names} differ from {produced}")

    def execute(self, requests):
        self.times.start()
        settings = [None] * len(requests)
        responses = [None] * len(requests)
        if self.post is not None:  # a request with bad settings fails alone, before the batch runs
            for i, r in enumerate(requests):
                try:
                    settings[i] = self.post.settings(r.parameters())
                except (ValueError, TypeError) as e:
                    responses[i] = _invalid(e)
        live = [i for i in range(len(requests)) if responses[i] is None]
        if self.preprocess is not None:  # images in: a bad one fails its own request
            parts, metas = {}, {}
            for i, result in zip(live, self.preprocess([requests[i] for i in live])):
                if isinstance(result, Exception):  # the request's preprocess.ImageError
                    responses[i] = _invalid(result)
                else:
                    parts[i], metas[i] = result
            live = [i for i in live if responses[i] is None]
        else:
            tensors = {i: pb_utils.get_input_tensor_by_name(requests[i], self.input_name) for i in live}
            parts = {i: t.as_numpy() if t.is_cpu() else ort.OrtValue.from_dlpack(t.to_dlpack())
                     for i, t in tensors.items()}
        if not live:
            return responses
        counts = [rows(parts[i]) for i in live]
        outputs = dict(zip(self.detector.output_names, self.detector([parts[i] for i in live])))
        if self.post is not None and self.preprocess is None:
            metas = {i: _host(pb_utils.get_input_tensor_by_name(requests[i], "image_meta")) for i in live}
        together = self.post is not None and all(settings[i] == settings[live[0]] for i in live)
        if together:  # the usual case, every request with the same settings: the batch's NMS in one call
            outputs = self.post(outputs, np.concatenate([metas[i] for i in live]), settings[live[0]])
        start = 0
        for i, n in zip(live, counts):
            mine = {name: v[start:start + n] for name, v in outputs.items()}
            start += n
            if self.post is not None and not together:  # requests with settings of their own
                mine = self.post(mine, metas[i], settings[i])
            responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(name, mine[name]) for name in self.output_names])
        self.times.mark("nms" if self.post is not None else "outputs")
        self.times.finish(sum(counts))
        return responses

    def finalize(self):
        # one line at unload: a server whose stop waits out Triton's exit timeout shows whether this stub got here
        pb_utils.Logger.log_info(f"{getattr(self, 'instance', 'detector')}: unloading")
