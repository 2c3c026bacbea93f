"""Around the server: the tritonserver wrapper and its MPS daemon, publishing to S3, deployment manifests, the pipeline in-process."""
