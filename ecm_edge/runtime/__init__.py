"""The torch-free runtime: inference backends, streaming, sources and sinks."""
