"""ONNX export of pathrt generators and whole explainers (installed as `pathrt.export`).

`export_explainer` / `export_generator` write verified ONNX files (dynamic batch, opset ≥ 18,
standard ops only, metadata with the pathway spec, threshold, fingerprints and version);
`load_onnx` opens one in ONNX Runtime after checking it. `pathrt export` is the command line.
Needs the `onnx` extra: `pip install pathrt[onnx]` (or `pathrt[onnx-gpu]`). Importing this
package registers the `onnx` explain backend (`pathrt.export.backend`) with the runtime.
"""

from pathrt.export.backend import OnnxBackend
from pathrt.export.onnx_export import (
    ExportError,
    ExportReport,
    OnnxExplainerFile,
    explainer_model,
    export_explainer,
    export_generator,
    finish_model,
    generator_model,
    load_onnx,
    plain_session,
    session_options,
    verify_explainer,
    verify_generator,
)
from pathrt.runtime.backends import register_backend

register_backend(OnnxBackend)

__all__ = [
    "ExportError",
    "ExportReport",
    "OnnxBackend",
    "OnnxExplainerFile",
    "explainer_model",
    "export_explainer",
    "export_generator",
    "finish_model",
    "generator_model",
    "load_onnx",
    "plain_session",
    "session_options",
    "verify_explainer",
    "verify_generator",
]
