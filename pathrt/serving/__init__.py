"""Serving explanations on NVIDIA Triton Inference Server (`pathrt serve`, extra `pathrt[serve]`).

`Server` runs the explainer as a Triton model with dynamic batching (through PyTriton's bundled
server), `Client` explains images on it, and `repository` writes Triton model repositories (the
served Python-backend model, and the exported ONNX explainer for Triton's ONNX Runtime backend).
The tensors both sides agree on are in `protocol`.
"""

from pathrt.serving.client import Client
from pathrt.serving.protocol import input_specs, output_specs
from pathrt.serving.repository import (
    Batching,
    Instances,
    ModelConfig,
    explainer_config,
    write_explainer_repository,
    write_onnx_repository,
)
from pathrt.serving.server import Endpoints, Server, free_ports, stop_on_signals

__all__ = ["Batching", "Client", "Endpoints", "Instances", "ModelConfig", "Server", "explainer_config", "free_ports",
           "input_specs", "output_specs", "stop_on_signals", "write_explainer_repository", "write_onnx_repository"]
