"""Which explain backends can run here, why the others cannot, and what `backend="auto"` picks.

Each fast backend lists the reason it cannot run (the xformers habit): the extension or Triton
missing, no kernels for the device, a model the plan cannot lower, a generator threshold other
than the fused op's 0.5. `auto` takes the first usable one of session (the whole path in C++, on
CPU), native (C++/CUDA), then triton on a GPU, and falls back to eager, recording why.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch
from torch import nn

from pathrt.errors import IncompatibleArtifactError, InputError
from pathrt.generator import PathwayGenerator
from pathrt.runtime import ops
from pathrt.runtime.fast_path import NATIVE, SPARSE_LIMIT, KernelSet, PlanRunner
from pathrt.targets import Target
from pathrt.targets.plan import PlanError
from pathrt.targets.spec import PathwaySpec

BACKENDS = ("eager", "native", "triton", "onnx", "session", "auto")
FUSED_OPS = ("daq_threshold_pack", "masked_bias_relu", "masked_bias_relu_", "pathway_conv2d")
# Per-sample sparse convs on a GPU (one thread per output value, against cuDNN) are not measured yet
# (no GPU was lent); until they are, use them only at very high sparsity there.
CUDA_SPARSE_LIMIT = 0.05


def native_unavailable(device: torch.device) -> str | None:
    """Why the native backend cannot run on `device`, or None if it can."""
    if ops.EXTENSION is None:
        return f"the extension pathrt._C is not loaded ({ops.EXTENSION_ERROR})"
    key = "CUDA" if device.type == "cuda" else "CPU"
    if device.type not in ("cpu", "cuda"):
        return f"no pathrt kernels for device type {device.type!r}"
    missing = [name for name in FUSED_OPS if ops.implementations()[name][key] != "native"]
    if missing:
        return f"pathrt._C has no {key} kernels for {', '.join(missing)} (rebuild with `make build`)"
    return None


def triton_unavailable(device: torch.device) -> str | None:
    """Why the triton backend cannot run on `device`, or None if it can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return (f"Triton kernels need a CUDA GPU (the tensors are on {device.type}); on CPU they run only under "
            "TRITON_INTERPRET=1, for tests")


def triton_kernels() -> KernelSet:
    """The Triton kernel set (imports triton, so only call it when `triton_unavailable` is None)."""
    from pathrt.kernels import ops as triton_ops

    return KernelSet("triton", triton_ops.daq_threshold_pack, triton_ops.masked_bias_relu,
                     triton_ops.pathway_conv2d)


def onnx_unavailable() -> str | None:
    """Why the onnx backend cannot run here, or None if it can."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed (pip install pathrt[onnx])" if missing else None


def session_unavailable(device: torch.device) -> str | None:
    """Why the session backend (pathrt._C.ExplainSession) cannot run on `device`, or None if it can."""
    if ops.EXTENSION is None:
        return f"the extension pathrt._C is not loaded ({ops.EXTENSION_ERROR})"
    if not hasattr(ops.EXTENSION, "ExplainSession"):
        return "pathrt._C was built without ExplainSession (rebuild with `make build`)"
    if device.type != "cpu":
        return f"the session runs on the CPU (the model is on {device.type}); use backend='native' there"
    return None


def device_backends(device: torch.device) -> dict[str, str | None]:
    """For `pathrt info`: each backend and why it cannot run on `device` (None: it can, model permitting)."""
    return {"eager": None, "native": native_unavailable(device), "triton": triton_unavailable(device),
            "onnx": onnx_unavailable() if device.type == "cpu" else "ONNX Runtime sessions take CPU tensors here",
            "session": session_unavailable(device)}


def open_session(target: Target, generator: PathwayGenerator, bundle_file: str | os.PathLike[str] | None,
                 num_threads: int = 0) -> tuple:
    """The session backend: (ExplainSession, reason). Bundles the target and generator in memory unless
    `bundle_file` is given, which must belong to this target and generator. Raises BundleError for a
    model the session cannot run and InputError where the session is unavailable."""
    from pathrt.artifacts import tensor_fingerprint
    from pathrt.runtime.bundle import bundle_bytes, read_bundle_meta

    param = next(iter(target.model.parameters()), None)
    unavailable = session_unavailable(param.device if param is not None else torch.device("cpu"))
    if unavailable:
        raise InputError(f"backend 'session' cannot run here: {unavailable}")
    session_class = ops.EXTENSION.ExplainSession  # type: ignore[union-attr]
    if bundle_file is None:
        session = session_class.from_bytes(bundle_bytes(target, generator), "<in-memory bundle>", num_threads)
        source = "bundled in memory"
    else:
        meta = read_bundle_meta(bundle_file)
        if meta.get("target_fingerprint") != target.fingerprint:
            raise IncompatibleArtifactError(f"{bundle_file} was bundled for another target; bundle this one")
        if meta.get("generator_fingerprint") != tensor_fingerprint(generator.state_dict()):
            raise IncompatibleArtifactError(f"{bundle_file} was bundled with another generator; bundle again")
        session = session_class(str(bundle_file), num_threads)
        source = f"from {bundle_file}"
    return session, f"C++ ExplainSession on cpu, bundle {source}"


def onnx_session(target: Target, generator: PathwayGenerator, onnx_file: str | os.PathLike[str] | None) -> tuple:
    """The onnx backend: (loaded file, reason). Exports the explainer in memory unless `onnx_file` is given,
    which must belong to this target and generator."""
    unavailable = onnx_unavailable()
    if unavailable:
        raise InputError(f"backend 'onnx' cannot run here: {unavailable}")
    from pathrt.artifacts import tensor_fingerprint
    from pathrt.export import explainer_model, finish_model, load_onnx

    if onnx_file is None:
        model, meta = explainer_model(target, generator)
        loaded = load_onnx(finish_model(model, meta), target=target)
        source = "exported in memory"
    else:
        loaded = load_onnx(onnx_file, target=target)
        if loaded.metadata.get("generator_fingerprint") != tensor_fingerprint(generator.state_dict()):
            raise IncompatibleArtifactError(f"{onnx_file} was exported with another generator; export it again")
        source = f"from {onnx_file}"
    needed = {"logits", "scores", "masks", "pathway_logits"}
    missing = needed - {o.name for o in loaded.session.get_outputs()}
    if missing:
        raise IncompatibleArtifactError(f"the ONNX explainer lacks outputs {sorted(missing)}; export all outputs")
    return loaded, f"ONNX Runtime ({', '.join(loaded.providers)}), explainer graph {source}"


@dataclass(frozen=True)
class BackendChoice:
    """The backend an Explainer runs, why, and its plan runner (None for eager)."""

    name: str
    reason: str
    runner: PlanRunner | None


def _runner(name: str, model: nn.Module, spec: PathwaySpec, threshold: float,
            device: torch.device) -> tuple[PlanRunner | None, str]:
    unavailable = native_unavailable(device) if name == "native" else triton_unavailable(device)
    if unavailable:
        return None, unavailable
    if threshold != ops.MASK_THRESHOLD:
        return None, f"the generator's threshold is {threshold}; the fused kernels apply {ops.MASK_THRESHOLD}"
    kernels = NATIVE if name == "native" else triton_kernels()
    limit = CUDA_SPARSE_LIMIT if device.type == "cuda" else SPARSE_LIMIT
    try:
        # channels-last pays on CPU (oneDNN, pooling); the Triton kernels index NCHW
        runner = PlanRunner(model, spec, kernels, sparse_limit=limit,
                            channels_last=device.type == "cpu" and name == "native")
    except PlanError as exc:
        return None, str(exc)
    return runner, f"{kernels.name} kernels on {device.type}, model lowered to {len(runner.plan.steps)} plan steps"


def choose_backend(requested: str, model: nn.Module, spec: PathwaySpec, threshold: float) -> BackendChoice:
    """Resolves `requested` (one of BACKENDS) for a canonized model; raises InputError if it cannot run."""
    if requested not in BACKENDS:
        raise InputError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "eager":
        return BackendChoice("eager", "requested", None)
    if requested == "onnx":
        raise InputError("backend 'onnx' is opened by Explainer itself (it needs the target and generator)")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    if requested != "auto":
        runner, reason = _runner(requested, model, spec, threshold, device)
        if runner is None:
            raise InputError(f"backend {requested!r} cannot run here: {reason}. Use backend='auto' to fall back")
        return BackendChoice(requested, f"requested; {reason}", runner)
    why_not = []
    for name in ("native", "triton") if device.type == "cuda" else ("native",):
        runner, reason = _runner(name, model, spec, threshold, device)
        if runner is not None:
            return BackendChoice(name, f"auto: {reason}", runner)
        why_not.append(f"{name}: {reason}")
    return BackendChoice("eager", "auto: eager, because " + "; ".join(why_not), None)
