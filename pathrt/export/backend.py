"""The onnx backend: the whole explainer exported to ONNX (in memory, or `onnx_file` from
`pathrt export`) and run by ONNX Runtime. CPU tensors in and out; it computes its own masks, so it
has no pathway pass for given masks (the Explainer runs those on the eager reference). It lives
here, beside the exporter it needs, and `pathrt.export` registers it with the runtime's registry."""

from __future__ import annotations

import importlib.util

import torch

from pathrt.artifacts import tensor_fingerprint
from pathrt.errors import IncompatibleArtifactError
from pathrt.export.onnx_export import OnnxExplainerFile, explainer_model, finish_model, load_onnx
from pathrt.runtime.backends import CONCURRENT, Backend, BackendContext, ChunkResult, Unavailable
from pathrt.runtime.ops import pack_masks

OUTPUTS = ("logits", "scores", "masks", "pathway_logits")


class OnnxBackend(Backend):
    name = "onnx"
    capabilities = frozenset({CONCURRENT})

    def __init__(self, device: torch.device, loaded: OnnxExplainerFile, reason: str) -> None:
        super().__init__(device, reason)
        self.loaded = loaded

    @classmethod
    def unavailable_on(cls, device: torch.device) -> str | None:
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            return f"{', '.join(missing)} not installed (pip install pathrt[onnx])"
        if device.type != "cpu":
            return "ONNX Runtime sessions take CPU tensors here"
        return None

    @classmethod
    def build(cls, context: BackendContext) -> Backend | Unavailable:
        target, generator, onnx_file = context.target, context.generator, context.options.onnx_file
        threads = context.options.num_threads
        if onnx_file is None:
            loaded = load_onnx(finish_model(*explainer_model(target, generator)), target=target, num_threads=threads)
        else:
            loaded = load_onnx(onnx_file, target=target, num_threads=threads)
            if loaded.metadata.get("generator_fingerprint") != tensor_fingerprint(generator.state_dict()):
                raise IncompatibleArtifactError(f"{onnx_file} was exported with another generator; export it again")
        missing = set(OUTPUTS) - {o.name for o in loaded.session.get_outputs()}
        if missing:
            raise IncompatibleArtifactError(f"the ONNX explainer lacks outputs {sorted(missing)}; export all outputs")
        source = "exported in memory" if onnx_file is None else f"from {onnx_file}"
        return cls(context.device, loaded, f"ONNX Runtime ({', '.join(loaded.providers)}), explainer graph {source}")

    def explain(self, x: torch.Tensor) -> ChunkResult:
        out = self.loaded.run(x)  # cast to the file's dtype there
        device = x.device
        masks = out["masks"].to(device)
        return ChunkResult(masks, pack_masks(masks), out["scores"].to(device), out["logits"].to(device),
                           out["pathway_logits"].to(device))
