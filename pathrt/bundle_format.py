"""The plan and bundle contract, read from `bundle.schema.json` beside this file (declared once).

The schema file declares the bundle's JSON plan (format, version, steps and their attributes, the
generator's shape and tensor names) and the conv-strategy policy: in which order the pathway pass
tries the channel-skipping strategies, by which measure of the batch's masks and up to which limit
(per device type). Every executor follows it: `pathrt.runtime.fast_path.PlanRunner` reads the
policy from here, the C++ session from the bundle the writer made from here. `validate` checks a
bundle's metadata against the schema before it is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from pathrt.errors import BundleError

SCHEMA_FILE = Path(__file__).with_name("bundle.schema.json")
SCHEMA: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
FORMAT: str = SCHEMA["x-format"]
VERSION: int = SCHEMA["x-version"]
PLAN_OPS: tuple[str, ...] = tuple(SCHEMA["$defs"]["step"]["properties"]["op"]["enum"])
TENSOR_NAMES: dict[str, Any] = SCHEMA["x-tensor-names"]
FALLBACK_STRATEGY: str = SCHEMA["x-conv-strategies"]["fallback"]
STRATEGIES: tuple[str, ...] = (FALLBACK_STRATEGY, *(r["name"] for r in SCHEMA["x-conv-strategies"]["order"]))
MEASURES: tuple[str, ...] = tuple(SCHEMA["properties"]["conv_strategies"]["items"]["properties"]["measure"]["enum"])

_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@dataclass(frozen=True)
class StrategyRule:
    """Run convs with `name` when `measure` of the batch's masks is at most `limit`, for convs whose
    output has at least `min_batch_pixels` pixels over the batch (N x H_out x W_out)."""

    name: str
    measure: str
    limit: float
    min_batch_pixels: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "measure": self.measure, "limit": self.limit,
                "min_batch_pixels": self.min_batch_pixels}


def conv_strategies(device_type: str) -> tuple[StrategyRule, ...]:
    """The policy for tensors on `device_type` ("cpu" or "cuda"; others get the CPU limits)."""
    key = device_type if device_type in ("cpu", "cuda") else "cpu"
    return tuple(StrategyRule(r["name"], r["measure"], float(r["limit"][key]),
                              int(r.get("min_batch_pixels", {}).get(key, 0)))
                 for r in SCHEMA["x-conv-strategies"]["order"])


# A conv of at most this many output pixels over the batch (N x H_out x W_out) runs "union" as "sparse",
# per device: on CPU the sparse kernel's dot products read each sample's kept weights in place there
# (`pathrt._C.DOT_MAX_PIXELS`), where the union conv copies them (ResNet-18@64 at batch 2, a 2x2 512->512
# conv on 2 cores: 1.37 ms as union, 0.29-0.43 as sparse, 0.55 dense). A batch of one sample runs it as
# sparse on any device: its union is its own channels.
UNION_AS_SPARSE_MAX_PIXELS = {"cpu": 16, "cuda": 0}


def union_runs_as_sparse(device_type: str, batch: int, pixels: int) -> bool:
    """Whether a conv the policy runs as "union" runs as "sparse" (see UNION_AS_SPARSE_MAX_PIXELS)."""
    return batch == 1 or pixels <= UNION_AS_SPARSE_MAX_PIXELS.get(device_type, UNION_AS_SPARSE_MAX_PIXELS["cpu"])


def tensor_name(role: str, **fields: object) -> str:
    """The bundle name of a tensor: `TENSOR_NAMES[role]` (or its i-th entry) with `fields` filled in."""
    pattern = TENSOR_NAMES[role]
    index = fields.pop("i", None)
    if isinstance(pattern, list):
        pattern = pattern[int(index)]  # type: ignore[arg-type]
    return pattern.format(**fields)


def validate(meta: dict[str, Any]) -> None:
    """Raises BundleError unless `meta` follows the schema (the first few violations, with their paths)."""
    errors = sorted(_VALIDATOR.iter_errors(meta), key=lambda e: list(e.absolute_path))
    if errors:
        where = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:200]}" for e in errors[:3])
        raise BundleError(f"the bundle does not follow {SCHEMA_FILE.name} v{VERSION} ({where}); please report this")
