"""Benchmarks (not tests): ``python -m benchmarks.run`` compares keras-vit's ONNX and training speed with timm's."""
