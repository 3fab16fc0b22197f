"""Turn bundles into deployable graphs (ONNX; TensorRT where it exists) and prove parity."""
