"""ONNX export of generators and whole explainers (installed as `pathrt.export`).

Arrives with the ONNX issue; this package holds no exporter yet.
"""
