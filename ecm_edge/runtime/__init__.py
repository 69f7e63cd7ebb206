"""The torch-free runtime: inference engines, streaming, sources and sinks."""
