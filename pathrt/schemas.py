"""JSON schemas of every pathrt artifact's metadata, checked before any of it is used.

Each schema bounds what it lets through (string lengths, list lengths, integer ranges) so that a
hostile sidecar cannot make pathrt build an enormous model or allocate an enormous tensor: a model
is built from validated metadata only, and then only on the meta device until its tensor shapes
match the weights file (see `pathrt.targets.target` and `pathrt.generator.generator`).
"""

from __future__ import annotations

from typing import Any

import jsonschema

from pathrt.errors import ArtifactError

# Bounds of what a legitimate artifact holds (ImageNet-sized CNNs at up to 1024 px).
MAX_LAYERS = 1024
MAX_CHANNELS = 1 << 16
MAX_SIDE = 1024
MAX_IMAGE_CHANNELS = 16
MAX_CLASSES = 100_000
MAX_NAME = 512

_int = {"type": "integer"}
_name = {"type": "string", "maxLength": MAX_NAME}
_text = {"type": "string", "maxLength": 1 << 16}
_sha256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_number = {"type": "number"}


def _range(low: int, high: int) -> dict[str, Any]:
    return {**_int, "minimum": low, "maximum": high}


def _fraction(exclusive_low: bool = False) -> dict[str, Any]:
    low = {"exclusiveMinimum": 0} if exclusive_low else {"minimum": 0}
    return {**_number, **low, "maximum": 1}


PATHWAY_SPEC = {
    "type": "object",
    "required": ["rule", "input_shape", "layers"],
    "additionalProperties": False,
    "properties": {
        "rule": _name,
        "input_shape": {"type": "array", "prefixItems": [_range(1, MAX_IMAGE_CHANNELS), _range(1, MAX_SIDE),
                                                          _range(1, MAX_SIDE)], "items": False, "minItems": 3},
        "layers": {"type": "array", "minItems": 1, "maxItems": MAX_LAYERS, "items": {
            "type": "array", "minItems": 4, "items": False,
            "prefixItems": [_name, _range(1, MAX_CHANNELS), _range(1, MAX_SIDE), _range(1, MAX_SIDE)]}},
    },
}

GENERATOR_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "d_r": _range(1, 4096), "d": _range(1, 8192), "s0": {"anyOf": [{"type": "null"}, _range(1, 64)]},
        "pool_size": _range(1, 64), "depth": _range(1, 64), "heads": _range(1, 256),
        "mlp_ratio": {**_number, "exclusiveMinimum": 0, "maximum": 16}, "dropout": {**_number, "minimum": 0,
                                                                                      "exclusiveMaximum": 1},
        "head_bias": {**_number, "minimum": -100, "maximum": 100}, "daq_sigma": {**_number, "minimum": 0,
                                                                                  "maximum": 100},
        "daq_temperature": {**_number, "exclusiveMinimum": 0, "maximum": 100}, "threshold": _fraction(),
    },
}

_COMMON = {"format": _name, "format_version": _int, "pathrt_version": _name, "fingerprint": _sha256,
           "weights_file": _name}
_COMMON_REQUIRED = ["format", "format_version", "fingerprint"]


def _artifact(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": _COMMON_REQUIRED + required,
            "properties": {**_COMMON, **properties}}


SCHEMAS: dict[str, dict[str, Any]] = {
    "pathrt.target": _artifact(["arch", "classes", "mean", "std", "pathway_spec"], {
        "arch": _name,
        "arch_kwargs": {"type": "object", "maxProperties": 64, "additionalProperties": {"anyOf": [
            {"type": ["number", "boolean", "null"]}, _name,
            {"type": "array", "maxItems": 256, "items": {"anyOf": [{"type": ["number", "boolean"]}, _name]}}]}},
        "classes": {"type": "array", "items": _name, "minItems": 1, "maxItems": MAX_CLASSES},
        "mean": {"type": "array", "items": _number, "minItems": 1, "maxItems": MAX_IMAGE_CHANNELS},
        "std": {"type": "array", "items": {**_number, "exclusiveMinimum": 0}, "minItems": 1,
                "maxItems": MAX_IMAGE_CHANNELS},
        "pathway_spec": PATHWAY_SPEC,
        "info": {"type": "object"},
    }),
    "pathrt.generator": _artifact(["config", "pathway_spec", "target_fingerprint"], {
        "config": GENERATOR_CONFIG, "pathway_spec": PATHWAY_SPEC, "target_fingerprint": _sha256,
        "info": {"type": "object"},
    }),
    "pathrt.explanation": _artifact(["backend", "count", "pathway_spec"], {
        "backend": _name, "backend_reason": _text, "count": _range(0, 1 << 40), "pathway_spec": PATHWAY_SPEC,
    }),
    "pathrt.class_pathways": _artifact(["threshold", "target_fingerprint", "pathway_spec"], {
        "threshold": _fraction(exclusive_low=True), "target_fingerprint": _sha256, "pathway_spec": PATHWAY_SPEC,
    }),
    "pathrt.training_state": {
        "type": "object",
        "required": ["config", "generator_config", "target_fingerprint", "step", "history", "param_groups",
                     "fingerprint"],
        "properties": {
            "config": {"type": "object"}, "generator_config": GENERATOR_CONFIG, "target_fingerprint": _sha256,
            "fingerprint": _sha256,
            "step": _range(0, 1 << 40), "history": {"type": "array", "items": {"type": "object"}},
            "param_groups": {"type": "array", "minItems": 1, "maxItems": 64, "items": {
                "type": "object", "required": ["params"],
                "properties": {"params": {"type": "array", "items": _range(0, 1 << 20)}}}},
        },
    },
    "pathway_spec": PATHWAY_SPEC,
    "pathrt.onnx": {
        "type": "object",
        "required": ["pathrt_format", "pathrt_format_version", "pathway_spec", "tensors_digest"],
        "properties": {"pathrt_format": _name, "pathrt_format_version": _name, "pathway_spec": _text,
                       "target_fingerprint": _sha256, "generator_fingerprint": _sha256, "dtype": _name,
                       "tensors_digest": _sha256},
    },
}

_VALIDATORS = {kind: jsonschema.Draft202012Validator(schema) for kind, schema in SCHEMAS.items()}


def validate(data: Any, kind: str, where: str) -> None:
    """Raises ArtifactError naming the first field of `data` that breaks the `kind` schema."""
    error = jsonschema.exceptions.best_match(_VALIDATORS[kind].iter_errors(data))
    if error is not None:
        field = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ArtifactError(f"{where}: the {kind} metadata is invalid at {field}: {error.message[:300]}; the file "
                            "is corrupted or was not written by pathrt")
