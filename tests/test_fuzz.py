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
