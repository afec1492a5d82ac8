"""The fuzz harnesses: every input a fuzzer ever found is replayed, and CI fuzzes each loader briefly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fuzz.harnesses import HARNESSES, run_one, seeds

REGRESSIONS = sorted((ROOT / "tests" / "fuzz" / "regressions").iterdir())


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_fuzz_findings_stay_fixed(path: Path) -> None:
    """Each crash input found by fuzzing now loads or raises the loader's documented error."""
    harness = path.name.split("-")[0]
    assert harness in HARNESSES
    run_one(harness, path.read_bytes())


@pytest.mark.parametrize("harness", sorted(HARNESSES))
def test_seeds_load(harness: str) -> None:
    """The seeds are valid files: each loads and runs without raising at all."""
    for data in seeds(harness):
        HARNESSES[harness](data)


@pytest.mark.slow
def test_fuzz_short_budget(tmp_path: Path) -> None:
    """CI's fuzzing budget: each harness for 20 s (Python coverage; `make fuzz` adds C++ coverage)."""
    result = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "--seconds", "20", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "fuzz.jsonl").read_text().splitlines()]
    assert sorted(r["harness"] for r in records) == sorted(HARNESSES)
    for record in records:
        assert record["executions"] > 0 and record["findings"] == [] and record["edges"] > 0, record


def _recorded_digest(harness: str, data: bytes) -> str:
    """The tensor digest a seed records (sidecar / safetensors metadata / ONNX metadata)."""
    import struct

    if harness == "onnx":
        import onnx

        return next(p.value for p in onnx.load_from_string(data).metadata_props if p.key == "tensors_digest")
    if harness == "bundle":
        (n,) = struct.unpack("<Q", data[:8])
        return json.loads(json.loads(data[8:8 + n])["__metadata__"]["pathrt"])["tensors_fingerprint"]
    (length,) = struct.unpack("<I", data[1:5])
    if data[0] == 4:  # training state: the digest is in the safetensors metadata
        weights = data[5 + length:]
        (n,) = struct.unpack("<Q", weights[:8])
        return json.loads(json.loads(weights[8:8 + n])["__metadata__"]["pathrt"])["fingerprint"]
    return json.loads(data[5:5 + length])["fingerprint"]


@pytest.mark.parametrize("harness", sorted(HARNESSES))
def test_resigned_inputs_get_past_the_digest(harness: str) -> None:
    """A seed whose recorded digest was changed is refused by every loader's digest check, and
    `resign` makes it load again: the fuzzer exercises the digest checks and what lies behind them."""
    from pathrt.errors import PathrtError
    from tests.fuzz.harnesses import resign

    for data in seeds(harness):
        digest = _recorded_digest(harness, data).encode()
        assert data.count(digest) == 1
        broken = data.replace(digest, b"0" * 64)
        with pytest.raises(PathrtError, match=r"modified|fingerprint|digest"):
            HARNESSES[harness](broken)
        HARNESSES[harness](resign(harness, broken))
