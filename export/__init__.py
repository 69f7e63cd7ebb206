"""Export: ONNX (FP32/FP16/INT8), TensorRT engines, manifests, parity validation (needs torch and onnx), and the
torch inference engine (``torch_engine``, a plugin the runtime's engine registry loads by name)."""
