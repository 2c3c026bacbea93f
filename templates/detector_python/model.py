"""Detector on the Python backend: ONNX Runtime on model.onnx (for servers without the ONNX Runtime backend).

Settings from config.pbtxt parameters: intra_op_threads, execution_providers (CUDA first on GPU
instances, on the instance's own device), model_file (model.onnx or the gated model.fp16.onnx).
Requests that the dynamic batcher groups are run as one ONNX Runtime call.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.onnx"))
        wanted = params.get("execution_providers", "CPUExecutionProvider").split(",")
        missing = [p for p in wanted if p not in ort.get_available_providers() and p != "CPUExecutionProvider"]
        if missing and args.get("model_instance_kind") == "GPU":
            raise pb_utils.TritonModelException(f"ONNX Runtime here lacks {missing} (install onnxruntime-gpu)")
        device = int(args.get("model_instance_device_id") or 0)
        # HEURISTIC: cuDNN's default exhaustive search re-runs for every new batch size the dynamic
        # batcher forms; measured on an H100 it cut served throughput at concurrency 8 to a third.
        cuda = {"device_id": device, "cudnn_conv_algo_search": "HEURISTIC"}
        providers = [(p, cuda) if p == "CUDAExecutionProvider" else p
                     for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o["name"] for o in config["output"]]
        if "CUDAExecutionProvider" in self.session.get_providers():
            dims = [int(d) for d in config["input"][0]["dims"]]
            for b in range(1, int(config["max_batch_size"]) + 1):  # every batch shape once, before serving
                self.session.run(self.output_names, {self.input_name: np.zeros([b, *dims], np.float32)})

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        responses, start = [], 0
        for n in sizes:
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, out[start:start + n]) for name, out in zip(self.output_names, outputs)]))
            start += n
        return responses
