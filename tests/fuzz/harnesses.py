"""Fuzz harnesses of every pathrt loader, and the valid seed inputs they start from.

Each harness takes one byte string and runs a loader on it the way a user's file would reach it:

- `artifact`: byte 0 picks the artifact kind (target, generator, explanation, class pathways,
  training state); bytes 1-4 (little-endian) the sidecar's length; then the JSON sidecar and the
  safetensors weights. Both are written to a RAM-backed folder and loaded with the public loader.
- `bundle`: the bytes are a bundle, opened by the C++ `ExplainSession.from_bytes` (its own JSON and
  safetensors reader, plan checks and a dry run), which then explains one image.
- `onnx`: the bytes are an ONNX explainer file, loaded by `pathrt.export.load_onnx` (the onnx
  backend's loader) and run on one image.

Every input also runs re-signed (`resign`: its recorded tensor digest recomputed for its mutated
tensors), so the fuzzer reaches the checks behind the digests as well as the digest checks.

The contract: a loader either returns something that works or raises the documented error
(`PathrtError`; the C++ session raises pathrt.errors' `BundleError` and `InputError` too).
Anything else — another exception, a crash, a hang, memory beyond libFuzzer's limit — is a finding.
"""

from __future__ import annotations

import copy
import functools
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

KINDS = ("target", "generator", "explanation", "class_pathways", "training_state")
_WORKDIR = Path(tempfile.mkdtemp(prefix="pathrt-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def tiny_models():
    """A 2-layer target (1x8x8 input, 12 neurons) and a generator for it: small seeds, fast loads."""
    from pathrt.generator import GeneratorConfig, PathwayGenerator
    from pathrt.targets import create_target

    torch.manual_seed(0)
    target = create_target("small_vgg", 3, (1, 8, 8), mean=(0.5,), std=(0.25,), cfg=[4, "M", 8], hidden=8,
                           in_channels=1)
    generator = PathwayGenerator(target.spec, GeneratorConfig.small(d=16, d_r=4, heads=2, depth=1, pool_size=2))
    return target, generator.eval()


@functools.cache
def _tiny_spec_models():
    return tiny_models()


def _models():
    """A fresh copy of the tiny generator (restoring into it changes it) and the tiny target."""
    target, generator = _tiny_spec_models()
    return target, copy.deepcopy(generator)


def _artifact_input(kind: int, folder: Path, stem: str) -> bytes:
    sidecar = (folder / f"{stem}.json").read_bytes() if (folder / f"{stem}.json").exists() else b""
    weights = folder / (f"{stem}.train.safetensors" if KINDS[kind] == "training_state" else f"{stem}.safetensors")
    return bytes([kind]) + struct.pack("<I", len(sidecar)) + sidecar + weights.read_bytes()


def seeds(harness: str) -> list[bytes]:
    """Valid inputs of `harness` (written by pathrt itself from the tiny models)."""
    target, generator = tiny_models()
    if harness == "bundle":
        from pathrt.runtime.bundle import bundle_bytes

        return [bundle_bytes(target, generator)]
    if harness == "onnx":
        from pathrt.export import explainer_model, finish_model

        return [finish_model(*explainer_model(target, generator))]
    if harness != "artifact":
        raise ValueError(f"unknown harness {harness!r}")
    from pathrt.data import TensorImageDataset
    from pathrt.generator import save_generator
    from pathrt.runtime import Explainer
    from pathrt.targets import save_target
    from pathrt.training import GeneratorTrainingConfig, train_generator
    from pathrt.transfer import build_class_pathways

    folder = Path(tempfile.mkdtemp(dir=_WORKDIR))
    save_target(target, folder / "target")
    save_generator(generator, folder / "generator", target.fingerprint)
    images = torch.rand(8, 1, 8, 8)
    explanation = Explainer(target, generator, backend="eager").explain(target.preprocess(images))
    explanation.save(folder / "explanation")
    labels = explanation.logits.argmax(1)
    build_class_pathways(explanation, labels, 3, target.fingerprint).save(folder / "class_pathways")
    data = TensorImageDataset(images, torch.zeros(8, dtype=torch.long), ("a", "b", "c"), "fuzz")
    train_generator(target, data, data, generator.config, GeneratorTrainingConfig(steps=2, batch_size=4, val_every=2,
                                                                                  checkpoint_every=2),
                    out=folder / "training_state", progress=False)
    return [_artifact_input(i, folder, kind) for i, kind in enumerate(KINDS)]


def _load_artifact(data: bytes) -> None:
    from pathrt.generator import load_generator
    from pathrt.runtime.explanation import Explanation
    from pathrt.targets import load_target
    from pathrt.training import _restore, load_training_state
    from pathrt.transfer import ClassPathways

    if len(data) < 5:
        return
    kind = KINDS[data[0] % len(KINDS)]
    (length,) = struct.unpack("<I", data[1:5])
    sidecar, weights = data[5:5 + length], data[5 + length:]
    stem = _WORKDIR / "input"
    for suffix in (".json", ".json.pending", ".safetensors", ".train.safetensors"):
        Path(f"{stem}{suffix}").unlink(missing_ok=True)
    if kind == "training_state":
        Path(f"{stem}.train.safetensors").write_bytes(weights)
        tensors, meta = load_training_state(Path(f"{stem}.train.safetensors"))
        _, generator = _models()
        if meta["generator_config"] == asdict(generator.config):  # what `--resume` checks before restoring
            optimizer = torch.optim.AdamW(generator.parameters())
            _restore(Path(f"{stem}.train.safetensors"), tensors, meta, generator, optimizer)
        return
    Path(f"{stem}.json").write_bytes(sidecar)
    Path(f"{stem}.safetensors").write_bytes(weights)
    if kind == "target":
        target = load_target(stem)
        target.capture(torch.zeros(1, *target.input_shape))
    elif kind == "generator":
        generator, _ = load_generator(stem)
        features = [torch.rand(1, lay.channels, lay.height, lay.width) for lay in generator.spec.layers]
        generator(features)
    elif kind == "explanation":
        Explanation.load(stem).layer_masks  # noqa: B018  (exercises the loaded tensors)
    else:
        ClassPathways.load(stem)


def _load_bundle(data: bytes) -> None:
    from pathrt.kernels import native as extension

    session = extension.EXTENSION.ExplainSession.from_bytes(data, "<fuzz>", 1)
    shape = session.input_shape
    session.explain(torch.zeros(1, *shape))


def _load_onnx(data: bytes) -> None:
    from pathrt.export import load_onnx

    loaded = load_onnx(data)
    loaded.run(torch.zeros(1, *loaded.spec.input_shape))


HARNESSES: dict[str, Callable[[bytes], None]] = {"artifact": _load_artifact, "bundle": _load_bundle,
                                                  "onnx": _load_onnx}


def expected_errors(harness: str) -> tuple[type[BaseException], ...]:
    """What each harness's loader may raise on bad input (anything else is a finding)."""
    from pathrt.errors import PathrtError

    return (PathrtError,)


def _resigned_safetensors(data: bytes, key: str) -> bytes | None:
    """A safetensors file whose pathrt metadata JSON records, under `key`, its tensors' digest."""
    import json

    from safetensors.torch import load, save

    from pathrt.artifacts import tensor_fingerprint

    header_len = struct.unpack("<Q", data[:8])[0]
    metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    meta = json.loads(metadata["pathrt"])
    tensors = load(data)
    meta[key] = tensor_fingerprint(tensors)
    return save(tensors, {**metadata, "pathrt": json.dumps(meta)})


def resign(harness: str, data: bytes) -> bytes | None:
    """`data` with its recorded tensor digest made to match its (mutated) tensors, so that inputs reach
    the checks behind the digest; None when the input is too broken to re-sign (the loader refuses it
    before its digest anyway)."""
    import json

    try:
        if harness == "bundle":
            return _resigned_safetensors(data, "tensors_fingerprint")
        if harness == "onnx":
            import onnx

            from pathrt.export.integrity import DIGEST_KEY, tensors_digest

            model = onnx.load_from_string(data)
            entry = next(p for p in model.metadata_props if p.key == DIGEST_KEY)
            entry.value = tensors_digest(model)
            return model.SerializeToString()
        kind, (length,) = data[0] % len(KINDS), struct.unpack("<I", data[1:5])
        sidecar, weights = data[5:5 + length], data[5 + length:]
        if KINDS[kind] == "training_state":
            return data[:5 + length] + _resigned_safetensors(weights, "fingerprint")
        from safetensors.torch import load

        from pathrt.artifacts import tensor_fingerprint

        meta = json.loads(sidecar)
        meta["fingerprint"] = tensor_fingerprint(load(weights))
        text = json.dumps(meta).encode()
        return data[:1] + struct.pack("<I", len(text)) + text + weights
    except Exception:  # any unparsable input: nothing to re-sign
        return None


def run_one(harness: str, data: bytes) -> None:
    """Runs `harness` on `data` and on `data` re-signed (`resign`), swallowing only the documented errors."""
    for candidate in (data, resign(harness, data)):
        if candidate is None:
            continue
        try:
            HARNESSES[harness](candidate)
        except expected_errors(harness):
            pass
