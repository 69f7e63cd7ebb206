"""Export: ONNX (FP32/FP16/INT8), TensorRT engines, manifests, parity validation (needs torch and onnx)."""
