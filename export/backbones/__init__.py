"""Feature backbones for export: the I3D network in torch and its ONNX export (needs torch and onnx)."""
