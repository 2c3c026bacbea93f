"""Detector on the Python backend: ONNX Runtime on model.onnx (for servers without the ONNX Runtime backend).

Settings from config.pbtxt parameters: intra_op_threads, execution_providers (CUDA first on GPU
instances, on the instance's own device), model_file (model.onnx or the gated model.fp16.onnx),
candidates_file (`--decode detector`: candidates.onnx decodes the heads into the top-K candidates
right after the network, in the same provider, so only those leave it). Requests that the dynamic
batcher groups are run as one ONNX Runtime call.

On a GPU instance whose inputs arrive on the GPU (the GPU preprocess; FORCE_CPU_ONLY_INPUT_TENSORS
"no"), the batch never visits the host: the requests' tensors come in through DLPack, are joined on
the device and bound to ONNX Runtime (IO binding); what the postprocess needs (the heads, or the
candidates) comes back to the host in one copy per output (the postprocess runs on the CPU). One CUDA
stream per instance orders the copies and the runs.
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
        on_gpu = args.get("model_instance_kind") == "GPU"
        if missing and on_gpu:
            raise pb_utils.TritonModelException(f"ONNX Runtime here lacks {missing} (install onnxruntime-gpu)")
        self.device = int(args.get("model_instance_device_id") or 0)
        # HEURISTIC: cuDNN's default exhaustive search re-runs for every new batch size the dynamic
        # batcher forms; measured on an H100 it cut served throughput at concurrency 8 to a third.
        cuda = {"device_id": self.device, "cudnn_conv_algo_search": "HEURISTIC"}
        self.stream, self.cudart = 0, None
        if on_gpu and "CUDAExecutionProvider" in wanted:
            from cuda.bindings import runtime as cudart

            self.cudart = cudart
            self._check(cudart.cudaSetDevice(self.device))
            if params.get("cuda_wait") == "block":  # waits sleep instead of spinning a core (ONNX Runtime's too)
                self._check(cudart.cudaSetDeviceFlags(cudart.cudaDeviceScheduleBlockingSync))
            self.stream = int(self._check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)))
            cuda["user_compute_stream"] = str(self.stream)
        providers = [(p, cuda) if p == "CUDAExecutionProvider" else p
                     for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o["name"] for o in config["output"]]
        self.binding = self.session.io_binding()
        self.on_cuda = "CUDAExecutionProvider" in self.session.get_providers()
        self.candidates = None
        if params.get("candidates_file"):
            cand_path = os.path.join(args["model_repository"], args["model_version"], params["candidates_file"])
            self.candidates = ort.InferenceSession(cand_path, opts, providers=providers)
            self.candidate_binding = self.candidates.io_binding()
            self.head_names = [i.name for i in self.candidates.get_inputs()]
        if self.on_cuda:
            dims = [int(d) for d in config["input"][0]["dims"]]
            for b in range(1, int(config["max_batch_size"]) + 1):  # every batch shape once, before serving
                self._run(np.zeros([b, *dims], np.float32))

    @staticmethod
    def _check(result):
        err, *rest = result
        if int(err) != 0:
            raise pb_utils.TritonModelException(f"CUDA runtime error {err}")
        return rest[0] if len(rest) == 1 else rest

    def execute(self, requests):
        tensors = [pb_utils.get_input_tensor_by_name(r, self.input_name) for r in requests]
        if self.cudart is not None and not all(t.is_cpu() for t in tensors):
            return self._execute_on_device(tensors)
        arrays = [t.as_numpy() for t in tensors]
        sizes = [len(a) for a in arrays]
        return self._responses(sizes, self._run(arrays[0] if len(arrays) == 1 else np.concatenate(arrays)))

    def _run(self, batch):
        """The network (and candidates.onnx) on one batch, a numpy array or an OrtValue; outputs on the host."""
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        if isinstance(batch, np.ndarray):
            b.bind_cpu_input(self.input_name, batch)
        else:
            b.bind_ortvalue_input(self.input_name, batch)
        if self.candidates is None:
            # The heads go to the host in one copy per output: the postprocess runs on the CPU, and on an H100
            # this beat returning per-request GPU tensors that Triton then copies one by one (1058 vs 937 img/s).
            for name in self.output_names:
                b.bind_output(name, "cpu")
            self.session.run_with_iobinding(b)
            outputs = b.get_outputs()
        else:  # the heads stay where the network left them (the GPU) and only the top-K candidates come back
            for name in self.head_names:
                if self.on_cuda:
                    b.bind_output(name, "cuda", self.device)
                else:
                    b.bind_output(name, "cpu")
            self.session.run_with_iobinding(b)
            c = self.candidate_binding
            c.clear_binding_inputs()
            c.clear_binding_outputs()
            for name, value in zip(self.head_names, b.get_outputs()):
                c.bind_ortvalue_input(name, value)
            for name in self.output_names:
                c.bind_output(name, "cpu")
            self.candidates.run_with_iobinding(c)
            outputs = c.get_outputs()
        if self.cudart is not None:
            self._check(self.cudart.cudaStreamSynchronize(self.stream))  # the runs are on our stream: wait for them
        return [o.numpy() for o in outputs]

    def _responses(self, sizes, outputs):
        responses, start = [], 0
        for n in sizes:
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, out[start:start + n]) for name, out in zip(self.output_names, outputs)]))
            start += n
        return responses

    def _copy(self, dst: int, src: int, nbytes: int):
        # cudaMemcpyDefault: the source may be host memory (Triton falls back to pinned host memory when its
        # CUDA pool is full), the direction follows from the pointers (unified addressing)
        self._check(self.cudart.cudaMemcpyAsync(dst, src, nbytes, self.cudart.cudaMemcpyKind.cudaMemcpyDefault,
                                                self.stream))

    def _execute_on_device(self, tensors):
        values = [ort.OrtValue.from_dlpack(t.to_dlpack()) for t in tensors]
        sizes = [v.shape()[0] for v in values]
        if len(values) == 1:
            batch = values[0]  # on the host or the device: ONNX Runtime takes either
        else:  # join the requests on the device, in the instance's stream
            batch = ort.OrtValue.ortvalue_from_shape_and_type([sum(sizes), *values[0].shape()[1:]], np.float32,
                                                              "cuda", self.device)
            offset, per_image = 0, 4 * int(np.prod(values[0].shape()[1:]))
            for v, n in zip(values, sizes):
                self._copy(batch.data_ptr() + offset, v.data_ptr(), n * per_image)
                offset += n * per_image
        return self._responses(sizes, self._run(batch))

