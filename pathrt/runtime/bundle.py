"""The deployment bundle: one safetensors file that `pathrt._C.ExplainSession` runs without Python.

`write_bundle` lowers a target and its generator into
  * tensors: the canonized target's weights per plan step (`target.<module>.weight|bias`; a folded
    adaptive-pool → flatten → linear chain stores the folded weight for the spec's input size) and
    the generator with its BatchNorms folded (`gen.*`, in the argument order of the fused ops);
  * the JSON plan in the safetensors metadata (key "pathrt"): format and version, the pathway
    spec, threshold, fingerprints, preprocessing, the plan steps (conv2d, linear, relu, max/avg
    pool, adaptive avg pool, flatten, add; each with its pathway layer and masks) and the
    generator's shape (layers, pooling, repeats, heads, epsilons).
The file is written atomically. Models the plan cannot lower fail here with `BundleError`, naming
the module and pointing to the torch backends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from pathrt.artifacts import atomic_write, tensor_fingerprint
from pathrt.errors import ArtifactError
from pathrt.generator import PathwayGenerator
from pathrt.runtime.fast_path import NATIVE, SPARSE_LIMIT, UNION_LIMIT, PlanRunner, folded_generator
from pathrt.runtime.generator_ops import HEAD_PARAMS, PDN_PARAMS, RPD_PARAMS, FusedGenerator
from pathrt.runtime.ops import MASK_THRESHOLD
from pathrt.targets import Target, canonized_copy
from pathrt.targets.plan import PlanError
from pathrt.version import __version__

BUNDLE_FORMAT = "pathrt.bundle"
BUNDLE_VERSION = 1
METADATA_KEY = "pathrt"


class BundleError(ArtifactError):
    """A bundle cannot be written for this model, or a file is not a readable pathrt bundle."""


def _pair(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, tuple | list) else [int(value), int(value)]


def _plan_json(runner: PlanRunner, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The plan's steps as JSON (skipping the steps folded into a linear), filling `tensors`."""
    steps = []
    for i, step in enumerate(runner.plan.steps):
        if i in runner.skip:
            continue
        entry: dict[str, Any] = {"op": step.op, "inputs": list(step.inputs), "output": step.output,
                                 "pathway": step.pathway, "in_mask": step.in_mask, "out_mask": step.out_mask,
                                 "pathway_pass": i >= runner.resume}
        a = step.attrs
        if step.module is not None:
            weight, bias = runner.weights[step.module]
            if step.module in runner.folded_pools:
                weight = runner.folded_linear_weight(step.module)
                entry["inputs"] = [runner.folded_pools[step.module].inputs[0]]
                entry["flatten_input"] = True
            entry["weight"] = f"target.{step.module}.weight"
            tensors[entry["weight"]] = weight
            if bias is not None:
                entry["bias"] = f"target.{step.module}.bias"
                tensors[entry["bias"]] = bias
            entry["relu"] = bool(a.get("relu"))
        if step.op == "conv2d":
            entry.update(stride=_pair(a["stride"]), padding=_pair(a["padding"]), residual=bool(a.get("residual")))
        elif step.op in ("max_pool2d", "avg_pool2d"):
            stride = a["stride"] if a["stride"] is not None else a["kernel_size"]
            entry.update(kernel_size=_pair(a["kernel_size"]), stride=_pair(stride), padding=_pair(a["padding"]),
                         ceil_mode=bool(a["ceil_mode"]))
        elif step.op == "adaptive_avg_pool2d":
            size = a["output_size"]
            if size is None or (isinstance(size, tuple | list) and None in size):
                raise BundleError("adaptive pools with a None output size cannot be bundled")
            entry["output_size"] = _pair(size)
        elif step.op == "flatten":
            entry["start_dim"] = int(a["start_dim"])
        steps.append(entry)
    first = runner.plan.steps[runner.first]
    # The pathway pass reuses the plain pass's `saved` values; those in `chain` (layer 1's output up to
    # the next conv) still need layer 1's mask, applied lazily (see PlanRunner._unmasked_chain).
    return {"steps": steps, "output": runner.plan.output, "chain": sorted(runner.chain),
            "chain_relu": first.op == "relu" or bool(first.attrs.get("relu")), "saved": sorted(runner.saved)}


def _generator_json(fused: FusedGenerator, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    for layer, (weight, bias) in enumerate(fused.stems):
        tensors[f"gen.stem.{layer}.weight"], tensors[f"gen.stem.{layer}.bias"] = weight, bias
    tensors["gen.shared.weight"], tensors["gen.shared.bias"] = fused.shared
    tensors["gen.cls"] = fused.cls
    for name, t in zip(("weight", "bias", "norm_weight", "norm_bias", "position"), fused.tail, strict=True):
        tensors[f"gen.tail.{name}"] = t
    for index, params in enumerate(fused.encoder):
        for name, t in zip(PDN_PARAMS, params, strict=True):
            tensors[f"gen.encoder.{index}.{name}"] = t
    for name, t in zip(RPD_PARAMS, fused.rpd, strict=True):
        tensors[f"gen.rpd.{name}"] = t
    for i, t in enumerate(fused.head_params):
        tensors[f"gen.head.{i // 4}.{HEAD_PARAMS[i % 4]}"] = t
    return {"layers": len(fused.stems), "pool_sizes": [list(p) for p in fused.pool_sizes],
            "repeats": list(fused.repeats), "depth": len(fused.encoder), "heads": fused.heads,
            "tail_eps": fused.eps, "encoder_eps": fused.encoder_eps, "rpd_eps": fused.rpd_eps}


def _bundle(target: Target, generator: PathwayGenerator) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The bundle's tensors and safetensors metadata."""
    if generator.spec != target.spec:
        raise BundleError("the generator was built for another pathway spec than the target's")
    if generator.config.threshold != MASK_THRESHOLD:
        raise BundleError(f"the session thresholds at {MASK_THRESHOLD}; this generator uses "
                          f"{generator.config.threshold}")
    try:
        runner = PlanRunner(canonized_copy(target.model), target.spec, NATIVE)
    except PlanError as exc:
        raise BundleError(f"cannot bundle this model: {exc}. The session runs plans of Conv2d, Linear, ReLU, "
                          "pools, Flatten and torchvision residual blocks; use Explainer(..., backend='native' or "
                          "'eager') for other models") from exc
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        plan = _plan_json(runner, tensors)
        gen = _generator_json(FusedGenerator(folded_generator(generator), torch.ops.pathrt), tensors)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}
    meta = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "pathrt_version": __version__,
        "arch": target.arch, "classes": list(target.classes), "mean": list(target.mean), "std": list(target.std),
        "input_shape": list(target.spec.input_shape), "pathway_spec": target.spec.to_dict(),
        "threshold": MASK_THRESHOLD, "sparse_limit": SPARSE_LIMIT, "union_limit": UNION_LIMIT,
        "target_fingerprint": target.fingerprint, "generator_fingerprint": tensor_fingerprint(generator.state_dict()),
        "tensors_fingerprint": tensor_fingerprint(tensors), "plan": plan, "generator": gen,
    }
    return tensors, {METADATA_KEY: json.dumps(meta)}


def bundle_bytes(target: Target, generator: PathwayGenerator) -> bytes:
    """The bundle of `target` + `generator` in memory (what `pathrt._C.ExplainSession.from_bytes` takes)."""
    tensors, metadata = _bundle(target, generator)
    return save(tensors, metadata=metadata)


def write_bundle(target: Target, generator: PathwayGenerator, path: str | os.PathLike[str]) -> Path:
    """Writes the bundle of `target` + `generator` to `path` (atomically); returns the path."""
    tensors, metadata = _bundle(target, generator)
    out = Path(path)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return out


def read_bundle_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON plan of a bundle (format and version checked); tensors are not loaded."""
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{p} does not exist; write a bundle with `pathrt bundle`")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
        meta = json.loads(raw) if raw is not None else None
    except Exception as exc:  # safetensors raises several types for corrupted headers
        raise BundleError(f"{p} is not a readable pathrt bundle ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{p} is a safetensors file but not a pathrt bundle (no '{METADATA_KEY}' plan)")
    if meta.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{p} has bundle format_version {meta.get('format_version')!r}; this pathrt reads "
                          f"{BUNDLE_VERSION}: write the bundle again with `pathrt bundle`")
    return meta


def verify_bundle(path: str | os.PathLike[str], target: Target, generator: PathwayGenerator,
                  images: int = 8) -> dict[str, Any]:
    """Runs the bundle in a C++ session and the eager reference on seeded random images; raises
    BundleError unless they agree as SPEC §8 asks. Returns the largest errors seen."""
    from pathrt.runtime.backends import open_session
    from pathrt.runtime.explainer import Explainer

    session, _ = open_session(target, generator, path)
    x = torch.randn(images, *target.spec.input_shape, generator=torch.Generator().manual_seed(0))
    got = session.explain(x)
    want = Explainer(target, generator, backend="eager").explain(x)
    near = (want.scores - MASK_THRESHOLD).abs() <= 1e-4
    mismatched = got["masks"] != want.masks
    report: dict[str, Any] = {"images": images, "mask_mismatches": int(mismatched.sum())}
    for name in ("logits", "pathway_logits"):
        ref = getattr(want, name)
        report[name] = float((got[name] - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if (mismatched & ~near).any() or max(report["logits"], report["pathway_logits"]) > 1e-4:
        raise BundleError(f"the bundle {path} does not reproduce the eager explainer ({report}); please report this")
    return report
