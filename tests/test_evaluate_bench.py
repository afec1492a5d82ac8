"""`pathrt evaluate` and `pathrt bench` end to end on small inputs."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pathrt.evaluate import HEADERS, evaluate, write_evaluation
from tests.conftest import ROOT, tiny_evaluation


def test_evaluate_table_has_every_method(tmp_path: Path) -> None:
    explainer, images, labels, sources, source_labels = tiny_evaluation(12, 30)
    rows = evaluate(explainer, images, labels, sources, source_labels, j=5, log=lambda _: None)
    assert [(r.method, r.setting) for r in rows] == [
        ("GEN-CNP", "operating point"), ("random", "matched per sample"),
        ("critical pathways", "own operating point"), ("critical pathways", "matched per sample"),
        ("DGR", "own operating point"), ("DGR", "matched per sample")]
    reference = rows[0].metrics["sparsity"]["mean"]
    for row in rows[1:]:
        if row.setting == "matched per sample":
            assert row.metrics["sparsity"]["mean"] == pytest.approx(reference)
    table, data = write_evaluation(rows, len(images), tmp_path)
    assert table.splitlines()[0].count("|") == len(HEADERS) + 1
    assert json.loads((tmp_path / "evaluation.json").read_text())["rows"][0]["method"] == "GEN-CNP"
    assert (tmp_path / "evaluation.png").stat().st_size > 0 and len(data["rows"]) == 6


@pytest.mark.slow
def test_bench_quick(tmp_path: Path) -> None:
    """`pathrt bench --quick` runs every registered path (untrained embedded model here)."""
    from pathrt.benchmarks.paths import PATHS

    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pathrt.cli", "bench", "--quick", "--workdir",
                             str(tmp_path / "no-demo"), "--out", str(tmp_path / "bench")],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"pathrt bench --quick took {seconds:.0f} s")
    with open(tmp_path / "bench" / "bench.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    gpu_only = set() if torch.cuda.is_available() else {"native-cuda", "triton"}
    expected = {(p, b) for p in PATHS for b in ("1", "8") if p not in gpu_only} - {("auto+contention", "8")}
    assert {(r["path"], r["batch"]) for r in rows} == expected
    assert all(r["device"] and r["torch"] and float(r["median_ms"]) > 0 for r in rows)
    plain = {r["batch"]: r for r in rows if r["path"] == "plain"}
    assert all(float(plain[b]["plain_passes"]) == 1.0 for b in plain)
    for batch in ("1", "8"):  # one unit per batch: the fastest of the plain paths, at 1.0 of itself
        unit = {r["fastest_plain"] for r in rows if r["batch"] == batch}
        assert len(unit) == 1 and unit <= {"plain", "plain-ort", "plain-compiled"}
        fastest = next(r for r in rows if r["batch"] == batch and r["path"] == next(iter(unit)))
        assert float(fastest["fastest_plain_passes"]) == 1.0
    explained = [r for r in rows if r["path"] in ("eager", "auto", "session")]
    assert all(float(r["fastest_plain_passes"]) > 1.0 for r in explained)
    # eager explains with hooks around torch's own plain pass; the session, whose small steps run on one
    # thread, can undercut torch's plain pass at batch 1 (every op of which wakes the other threads)
    assert all(float(r["plain_passes"]) > 1.0 for r in explained if r["path"] == "eager")
    two = next(r for r in rows if r["path"] == "session-2x1thread" and r["batch"] == "8")
    assert int(two["images"]) == 16  # two concurrent calls of 8
    text = (tmp_path / "bench" / "bench.md").read_text()
    assert "auto+contention batch 8: measured at batch 1 only" in text
    assert "cost only" in text and "GFLOP/s" in text and "one explanation =" in text
    assert "predicted" in text and "Pathway pass against sparsity" in text
    assert "generator.encoder" in text and " µs |" in text  # the session's generator phases, in µs
    assert "generator.decoder | threads |" in text  # and the threads its calls ran on, a count, not a time
    assert re.search(r" µs \| [12](\.5)? \|\n", text)
    for path in gpu_only:  # said why, not silently dropped
        assert f"embedded {path} batch 1: needs a CUDA GPU" in text
    native = {r["batch"]: float(r["median_ms"]) for r in rows if r["path"] == "native"}
    assert set(native) == {"1", "8"}
    sweep = json.loads((tmp_path / "bench" / "bench.json").read_text())["sparsity_sweep"]
    assert len(sweep) == 2 and sweep[0]["sparsity"] < 0.1 and sweep[1]["sparsity"] > 0.5  # --quick: 0% and 75%
    assert all(r["native_auto_ms"] > 0 and r["eager_pathway_ms"] > 0 for r in sweep)
    assert (tmp_path / "bench" / "bench.png").stat().st_size > 0
    assert (tmp_path / "bench" / "sparsity.png").stat().st_size > 0


def test_bench_plot_without_a_plain_row(tmp_path: Path) -> None:
    """`--paths session` alone has no plain pass to count in: the plot falls back to ms per image."""
    from pathrt.benchmarks.harness import Row, _plot

    rows = [Row("embedded", "session", batch, ms, ms, ms, 3, 1e6, batch) for batch, ms in ((1, 2.0), (8, 6.0))]
    _plot(rows, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_bench_models_time_the_eager_reference_as_eager(tmp_path: Path) -> None:
    """The `eager` rows must time the hook-based reference, whatever Explainer's default backend is."""
    from pathrt.benchmarks.harness import build_models

    (model,) = build_models(["embedded"], tmp_path / "no-demo", 0.6, 8)
    assert model.explainer.backend == "eager"
    native = model.backend("native")
    assert not isinstance(native, str) and native.backend == "native"
    if not torch.cuda.is_available():
        assert model.backend("triton", "cuda") == "needs a CUDA GPU (none here)"


def test_bench_random_models_are_the_same_in_every_build(tmp_path: Path) -> None:
    """The bench's random target and generator come from a fixed seed (a run's cost does not depend on
    which weights a process drew), and building them leaves the caller's random stream where it was."""
    from pathrt.benchmarks.harness import build_models

    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    first = build_models(["embedded"], tmp_path / "no-demo", 0.6, 8)[0].explainer
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(8)
    second = build_models(["embedded"], tmp_path / "no-demo", 0.6, 8)[0].explainer
    assert first.target.fingerprint == second.target.fingerprint
    for (name, a), b in zip(first.generator.state_dict().items(), second.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bench_rows_time_at_least_repeats_and_more_while_the_budget_lasts() -> None:
    """--repeats is a floor and --budget extends a fast row: its median comes from many calls."""
    from pathrt.benchmarks.harness import time_interleaved

    calls = []
    x = torch.zeros(1)
    assert len(time_interleaved([calls.append], x, warmup=2, repeats=7, budget=0.0, rounds=1)[0]) == 7
    assert len(calls) == 9
    assert len(time_interleaved([lambda _: None], x, warmup=0, repeats=1, budget=0.0, rounds=1)[0]) == 3
    assert len(time_interleaved([lambda _: time.sleep(0.002)], x, warmup=0, repeats=3, budget=0.2, rounds=1)[0]) >= 10


def test_bench_times_paths_in_interleaved_rounds() -> None:
    """The paths of one row group take turns, round after round (a noisy spell of the host lands on
    every path): warm-up calls once before a path's first round, the repeats floor split over the
    rounds (rounded up), each round's share of the budget kept."""
    from pathrt.benchmarks.harness import time_interleaved

    order: list[str] = []
    x = torch.zeros(1)
    a, b = (lambda _: order.append("a")), (lambda _: order.append("b"))
    times = time_interleaved([a, b], x, warmup=1, repeats=4, budget=0.0, rounds=3)
    assert [len(t) for t in times] == [6, 6]  # ceil(4 / 3) = 2 per round
    assert order == ["a"] * 3 + ["b"] * 3 + (["a"] * 2 + ["b"] * 2) * 2
    slow = time_interleaved([lambda _: time.sleep(0.002)], x, warmup=0, repeats=1, budget=0.3, rounds=3)[0]
    assert len(slow) >= 3 * 10  # each round keeps calling for 0.1 s


def test_bench_times_the_paths_timed_alone_in_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TIMED_ALONE paths run after the others, each at every batch, in TIMED_ALONE's order whatever
    order --paths gives: eager+compile before plain-compiled, whose compile of the shared target module
    stops eager+compile's capture hooks firing."""
    from types import SimpleNamespace

    from pathrt.benchmarks import harness
    from pathrt.benchmarks.paths import PATHS, TIMED_ALONE

    for name in (*TIMED_ALONE, "eager", "plain"):
        monkeypatch.setitem(PATHS, name, lambda model, batch: (lambda x: None))
    monkeypatch.setattr(harness, "count_flops", lambda runner, x: 1.0)
    model = SimpleNamespace(name="m", inputs=lambda batch: torch.zeros(batch, 1))
    rows = harness._time_model(model, [1, 2], ["plain-compiled", "eager+compile", "plain", "auto+contention"],
                               warmup=0, repeats=1, budget=0.0, context={"skipped": [], "phases": {}},
                               log=lambda line: None)
    assert [(r.path, r.batch) for r in rows] == [("plain", 1), ("plain", 2)] + [
        (path, batch) for path in ("auto+contention", "eager+compile", "plain-compiled") for batch in (1, 2)]


def test_bench_flags_override_quick_and_ignored_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """`--quick` is a preset that explicit flags override (the issue-21 gap: it ignored them); a flag
    the chosen mode would ignore is a clear error (exit 5), as is a data or export flag out of place."""
    from pathrt.cli import bench_settings, build_parser, main

    def settings(*argv: str) -> dict:
        return bench_settings(build_parser().parse_args(["bench", *argv]))

    quick = settings("--quick")
    assert quick["models"] == ["embedded"] and quick["batches"] == [1, 8] and quick["repeats"] == 5
    given = settings("--quick", "--models", "vgg11", "--batches", "2", "--repeats", "3", "--budget", "0.5",
                     "--sweep", "--warmup", "0")
    assert given["models"] == ["vgg11"] and given["batches"] == [2] and given["repeats"] == 3
    assert given["budget"] == 0.5 and given["sweep"] == [] and given["warmup"] == 0
    assert given["sweep_models"] == ["embedded"] and given["sweep_batch"] == 8  # the rest from the preset
    full = settings("--sweep", "0.3", "--sweep-batch", "4")
    assert full["models"] == ["embedded", "vgg11", "resnet18"] and full["sweep"] == [0.3] and full["sweep_batch"] == 4
    assert settings("--memory", "--memory-images", "64") == {"memory_images": 64,
                                                             "memory_models": ["embedded", "vgg11"]}
    assert settings("--load", "--load-models", "resnet18") == {"load_models": ["resnet18"]}
    assert settings("--distributed", "--ddp-steps", "0") == {"ray_images": 2048, "ray_block_size": 64, "ddp_steps": 0}
    assert settings("--serve", "--serve-duration", "2") == {"serve_concurrency": [1, 8, 32], "serve_duration": 2.0,
                                                            "serve_queue_delay_us": 1000}
    refused = {
        ("bench", "--memory", "--quick", "--batches", "4"): "--memory measures memory only: --quick, --batches are "
                                                            "not used there",
        ("bench", "--load", "--memory-images", "8"): "--load measures load only: --memory-images is not used",
        ("bench", "--memory-models", "vgg11"): "without --memory, --load, --serve, --distributed): --memory-models is "
                                               "not used",
        ("bench", "--distributed", "--serve-duration", "3"): "--distributed measures distributed only",
        ("bench", "--serve", "--load-models", "vgg11"): "--serve measures serve only: --load-models is not used",
        ("export", "--what", "generator", "--triton-repo", "x"): "--triton-repo serves the explainer file",
        ("bench", "--memory", "--load"): "separate runs",
        ("explain", "--actors", "2"): "--actors is only used with --engine ray",
        ("train-target", "--size", "64"): "--size is only used with --image-folder",
        ("export", "--what", "generator", "--fp16"): "--fp16 is only used for the explainer file",
    }
    for argv, message in refused.items():
        assert main(list(argv)) == 5, argv
        assert message in capsys.readouterr().err


def test_bench_load_times_both_loaders_and_their_digest(tmp_path: Path) -> None:
    """`pathrt bench --load`: the bundle and the ONNX explainer, each load timed with its digest check
    as a measured part of it (the loaders time it themselves)."""
    from pathrt.cli import main

    assert main(["bench", "--load", "--load-models", "embedded", "--workdir", str(tmp_path / "no-demo"),
                 "--out", str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "bench" / "load.json").read_text())
    assert [r["file"] for r in rows] == ["bundle (C++ session)", "ONNX explainer"]
    for r in rows:
        assert 0 < r["digest_ms"] < r["load_ms"] and r["mb"] > 1, r
        assert r["without_ms"] == pytest.approx(r["load_ms"] - r["digest_ms"])
    assert "load with digest (ms)" in (tmp_path / "bench" / "load.md").read_text()
