"""Build time: a detector (darknet cfg+weights, Keras, SavedModel) -> ONNX -> checks -> a Triton model repository, stage by stage."""
