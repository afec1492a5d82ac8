"""The deployment bundle: one safetensors file that `pathrt._C.ExplainSession` runs without Python.

`write_bundle` lowers a target and its generator into
  * tensors: the canonized target's weights per plan step (`target.<module>.weight|bias`; a folded
    adaptive-pool → flatten → linear chain stores the folded weight for the spec's input size) and
    the generator with its BatchNorms folded (`gen.*`, in the argument order of the fused ops);
  * the JSON plan in the safetensors metadata (key "pathrt"): format and version, the pathway
    spec, threshold, fingerprints, preprocessing, the plan steps (conv2d, linear, relu, max/avg
    pool, adaptive avg pool, flatten, add; each with its pathway layer and masks) and the
    generator's shape (layers, pooling, repeats, heads, epsilons) and the names of its tensors, and
    the conv-strategy policy the session follows.
Its format is declared once, in `pathrt/bundle.schema.json` (`pathrt.bundle_format`): every bundle
is validated against it before it is written. The file is written atomically. Models the plan
cannot lower fail here with `BundleError`, naming the module and pointing to the torch backends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from pathrt import bundle_format
from pathrt.artifacts import atomic_write, tensor_fingerprint
from pathrt.errors import BundleError
from pathrt.generator import PathwayGenerator
from pathrt.opspec import HEAD_PARAMS, MASK_THRESHOLD, PDN_PARAMS, RPD_PARAMS
from pathrt.runtime.fast_path import NATIVE, PlanRunner
from pathrt.runtime.fused_generator import FusedGenerator, folded_generator
from pathrt.targets import Target, canonized_copy
from pathrt.targets.plan import PlanError
from pathrt.version import __version__

METADATA_KEY = "pathrt"
__all__ = ["BundleError", "bundle_bytes", "read_bundle_meta", "write_bundle"]


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
            entry["weight"] = bundle_format.tensor_name("target", module=step.module, name="weight")
            tensors[entry["weight"]] = weight
            if bias is not None:
                entry["bias"] = bundle_format.tensor_name("target", module=step.module, name="bias")
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
        elif step.op == "activation":
            entry.update(kind=a["kind"], alpha=float(a["alpha"]))
        steps.append(entry)
    first = runner.plan.steps[runner.first]
    # The pathway pass reuses the plain pass's `saved` values; those in `chain` (layer 1's output up to
    # the next conv) still need layer 1's mask, applied lazily (see PlanRunner._unmasked_chain).
    return {"steps": steps, "output": runner.plan.output, "chain": sorted(runner.chain),
            "chain_relu": first.op == "relu" or bool(first.attrs.get("relu")), "saved": sorted(runner.saved)}


def _generator_json(fused: FusedGenerator, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The generator's shape and the names of its tensors (filling `tensors`), named as the contract says."""
    names = bundle_format.tensor_name

    def put(name: str, t: torch.Tensor) -> str:
        tensors[name] = t
        return name

    layers = range(len(fused.stems))
    recorded = {
        "stem": [[put(names("stem", i=j, layer=layer), t) for j, t in enumerate(params)]
                 for layer, params in zip(layers, fused.stems, strict=True)],
        "shared": [put(names("shared", i=j), t) for j, t in enumerate(fused.shared)],
        "cls": put(names("cls"), fused.cls),
        "tail": [put(names("tail", i=j), t) for j, t in enumerate(fused.tail)],
        "encoder": [[put(names("encoder", index=index, name=n), t) for n, t in zip(PDN_PARAMS, params, strict=True)]
                    for index, params in enumerate(fused.encoder)],
        "rpd": [put(names("rpd", name=n), t) for n, t in zip(RPD_PARAMS, fused.rpd, strict=True)],
        "head": [[put(names("head", layer=layer, name=n), fused.head_params[4 * layer + k])
                  for k, n in enumerate(HEAD_PARAMS)] for layer in layers],
    }
    return {"layers": len(fused.stems), "pool_sizes": [list(p) for p in fused.pool_sizes],
            "repeats": list(fused.repeats), "depth": len(fused.encoder), "heads": fused.heads,
            "tail_eps": fused.eps, "encoder_eps": fused.encoder_eps, "rpd_eps": fused.rpd_eps, "tensors": recorded}


def _bundle(target: Target, generator: PathwayGenerator,
            runner: PlanRunner | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The bundle's tensors and safetensors metadata (`runner`: the target's native plan runner, when
    the caller lowered it already)."""
    if generator.spec != target.spec:
        raise BundleError("the generator was built for another pathway spec than the target's")
    if generator.config.threshold != MASK_THRESHOLD:
        raise BundleError(f"the session thresholds at {MASK_THRESHOLD}; this generator uses "
                          f"{generator.config.threshold}")
    try:
        runner = runner or PlanRunner(canonized_copy(target.model), target.spec, NATIVE)
    except PlanError as exc:
        raise BundleError(f"cannot bundle this model: {exc}") from exc  # the plan's message says what still works
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        plan = _plan_json(runner, tensors)
        gen = _generator_json(FusedGenerator(folded_generator(generator), torch.ops.pathrt), tensors)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}
    meta = {
        "format": bundle_format.FORMAT, "format_version": bundle_format.VERSION, "pathrt_version": __version__,
        "arch": target.arch, "classes": list(target.classes), "mean": list(target.mean), "std": list(target.std),
        "input_shape": list(target.spec.input_shape), "pathway_spec": target.spec.to_dict(),
        "threshold": MASK_THRESHOLD,
        "conv_strategies": [rule.to_json() for rule in bundle_format.conv_strategies("cpu")],
        "target_fingerprint": target.fingerprint, "generator_fingerprint": tensor_fingerprint(generator.state_dict()),
        "tensors_fingerprint": tensor_fingerprint(tensors), "plan": plan, "generator": gen,
    }
    bundle_format.validate(meta)
    return tensors, {METADATA_KEY: json.dumps(meta)}


def bundle_bytes(target: Target, generator: PathwayGenerator, runner: PlanRunner | None = None) -> bytes:
    """The bundle of `target` + `generator` in memory (what `pathrt._C.ExplainSession.from_bytes` takes);
    `runner`: the target's native plan runner, when the caller lowered it already."""
    tensors, metadata = _bundle(target, generator, runner)
    return save(tensors, metadata=metadata)


def write_bundle(target: Target, generator: PathwayGenerator, path: str | os.PathLike[str]) -> Path:
    """Writes the bundle of `target` + `generator` to `path` (atomically); returns the path."""
    tensors, metadata = _bundle(target, generator, None)
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
    if not isinstance(meta, dict) or meta.get("format") != bundle_format.FORMAT:
        raise BundleError(f"{p} is a safetensors file but not a pathrt bundle (no '{METADATA_KEY}' plan)")
    if meta.get("format_version") != bundle_format.VERSION:
        raise BundleError(f"{p} has bundle format_version {meta.get('format_version')!r}; this pathrt reads "
                          f"{bundle_format.VERSION}: write the bundle again with `pathrt bundle`")
    return meta
