"""Target training, the `pathrt` command line and the demo, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pathrt.artifacts import artifact_paths
from pathrt.data import load_digits
from pathrt.demo import run_demo
from pathrt.targets import load_target
from pathrt.targets.training import TargetTrainingConfig, evaluate_accuracy, train_target
from tests.conftest import ROOT


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pathrt.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_default_target_reaches_95_percent(trained_target_path: Path) -> None:
    target = load_target(trained_target_path, arch="small_vgg")
    accuracy = evaluate_accuracy(target, load_digits("test"))
    assert accuracy >= 0.95
    assert target.info["test_accuracy"] == pytest.approx(accuracy)
    assert target.info["training"]["epochs"] == TargetTrainingConfig().epochs


@pytest.mark.slow
def test_training_is_seeded() -> None:
    train, test = load_digits("train").subset(range(256)), load_digits("test").subset(range(64))
    config = TargetTrainingConfig(epochs=1, seed=3)
    first = train_target(train, test, config, progress=False)
    second = train_target(train, test, config, progress=False)
    assert first.fingerprint == second.fingerprint
    third = train_target(train, test, TargetTrainingConfig(epochs=1, seed=4), progress=False)
    assert third.fingerprint != first.fingerprint


def test_cli_info() -> None:
    result = _cli("info")
    assert result.returncode == 0, result.stderr
    assert "pack_masks" in result.stdout and "pairwise_iou" in result.stdout and "CUDA kernels" in result.stdout
    as_json = json.loads(_cli("info", "--json").stdout)
    assert as_json["extension"]["loaded"] and set(as_json["ops"]) == {
        "pack_masks", "pairwise_iou", "daq_threshold_pack", "masked_bias_relu", "masked_bias_relu_", "pathway_conv2d",
        "rfe_tail", "pdn_encoder_layer", "rpd_decode"}
    assert as_json["backends"]["cpu"]["native"] is None and as_json["backends"]["cpu"]["session"] is None
    assert "explain backends" in result.stdout and "session" in result.stdout


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    result = _cli("train-target", "--image-folder", str(tmp_path / "missing"))
    assert result.returncode == 5  # a bad input (pathrt.errors.EXIT_CODES)
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_train_target_on_image_folder(tmp_path: Path) -> None:
    for c in ("dark", "light"):
        (tmp_path / "images" / c).mkdir(parents=True)
        for i in range(10):
            value = 20 + 3 * i if c == "dark" else 200 + 3 * i
            Image.new("RGB", (12, 12), (value, value, value)).save(tmp_path / "images" / c / f"{i}.png")
    out = tmp_path / "folder_target"
    result = _cli("train-target", "--image-folder", str(tmp_path / "images"), "--size", "16", "--epochs", "3",
                  "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    target = load_target(out)
    assert target.classes == ("dark", "light") and target.input_shape == (3, 16, 16)
    assert "test accuracy" in result.stdout


def test_cli_train_resume_and_explain(tmp_path: Path) -> None:
    from pathrt.targets import create_target, save_target

    save_target(create_target("small_vgg", 10, (3, 32, 32), cfg=(8, "M", 16, "M"), hidden=16), tmp_path / "t")
    args = ("train", "--target", str(tmp_path / "t"), "--out", str(tmp_path / "g"), "--steps", "4",
            "--batch-size", "16", "--no-progress")
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    assert "validation fidelity" in first.stdout
    again = _cli(*args, "--resume")  # already complete: resumes at step 4 of 4
    assert again.returncode == 0, again.stderr
    explained = _cli("explain", "--target", str(tmp_path / "t"), "--generator", str(tmp_path / "g"),
                     "--out", str(tmp_path / "explain"))
    assert explained.returncode == 0, explained.stderr
    summary = json.loads((tmp_path / "explain" / "summary.json").read_text())
    assert len(summary["images"]) == len(load_digits("test")) and "fidelity" in summary["metrics"]
    assert (tmp_path / "explain" / "explanations.safetensors").exists()
    assert "| image | class |" in (tmp_path / "explain" / "summary.md").read_text()
    evaluated = _cli("evaluate", "--target", str(tmp_path / "t"), "--generator", str(tmp_path / "g"),
                     "--out", str(tmp_path / "evaluate"), "--no-dgr", "--sources", "5", "--curve-steps", "2", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "no stored channel means: measuring them on 1438 training images" in evaluated.stderr
    data = json.loads(evaluated.stdout)  # --json: stdout holds the JSON alone
    assert data == json.loads((tmp_path / "evaluate" / "evaluation.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["GEN-CNP", "random", "critical pathways", "critical pathways"]
    curves = data["faithfulness"]["curves"]
    assert set(curves) == {"GEN-CNP", "critical pathways", "random"}
    assert len(curves["random"]["mean"]["deletion"]["probability"]) == 3  # 0, 50 and 100 %
    assert "\n## Faithfulness\n" in (tmp_path / "evaluate" / "evaluation.md").read_text()


@pytest.mark.slow
def test_demo_end_to_end(trained_target_path: Path, tmp_path: Path) -> None:
    """The issue's acceptance: GEN-CNP on the embedded default, against random pathways and in transfer."""
    for src in artifact_paths(trained_target_path):
        shutil.copy(src, tmp_path / f"target{src.suffix}")
    summary = run_demo(tmp_path, progress=False)
    ours, random = summary["gen_cnp"], summary["random"]
    assert summary["target"]["reused"] and not summary["generator"]["reused"]
    assert ours["fidelity"] >= 95.0
    assert ours["sparsity"]["mean"] >= 0.5 and ours["sparsity"]["std"] > 0
    assert ours["sparsity"]["mean"] == pytest.approx(random["sparsity"]["mean"])  # matched per sample
    assert ours["mDC"] < random["mDC"] and ours["acIOU"] > random["acIOU"]
    own, other, chance = (summary["transfer"][k]["fidelity"] for k in ("own class", "other class", "random"))
    assert own >= other + 50 and own >= chance + 50
    assert summary["generator"]["flops_fraction_of_plain_pass"] <= 0.25
    rows = summary["evaluation"]["rows"]
    gen_cnp, baselines = rows[0], rows[1:]
    assert gen_cnp["method"] == "GEN-CNP" and {r["method"] for r in baselines} == {"random", "critical pathways", "DGR"}
    for row in baselines:  # acIOU above every baseline's, at matched per-sample sparsity
        if row["setting"] == "matched per sample":
            assert row["metrics"]["sparsity"]["mean"] == pytest.approx(gen_cnp["metrics"]["sparsity"]["mean"])
            assert gen_cnp["metrics"]["acIOU"] > row["metrics"]["acIOU"]
    random_row = next(r for r in baselines if r["method"] == "random")
    assert gen_cnp["metrics"]["mDC"] <= random_row["metrics"]["mDC"]
    dgr = next(r for r in baselines if r["method"] == "DGR")
    assert dgr["ms_per_explanation"] >= 10 * gen_cnp["ms_per_explanation"]
    for name in ("report.md", "report.html", "class_pathways.png", "sparsity.png", "saliency.png", "transfer.png",
                 "faithfulness_curves.png", "faithfulness_randomization.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "\n## Faithfulness\n" in (tmp_path / "report" / "report.md").read_text()
    faithful = summary["evaluation"]["faithfulness"]
    curves = faithful["curves"]  # GEN-CNP's order beats a random order on both curves, zero ablation
    assert curves["GEN-CNP"]["zero"]["deletion"]["auc"] < curves["random"]["zero"]["deletion"]["auc"] - 0.1
    assert curves["GEN-CNP"]["zero"]["insertion"]["auc"] > curves["random"]["zero"]["insertion"]["auc"] + 0.2
    overall = faithful["sufficiency"]["GEN-CNP"]["zero"]["overall"]  # removing the pathway breaks the prediction
    assert overall["comprehensiveness"]["mDC"] > 50 and overall["sufficiency"]["mDC"] < 10
    assert faithful["randomization"][-1]["iou"] < 0.8  # the pathways follow the target's weights
    assert faithful["stability"]["perturbations"]["noise std 0.02"]["iou"] > 0.9
    again = run_demo(tmp_path, progress=False, faithfulness=False)  # everything cached now
    assert again["generator"]["reused"] and again["gen_cnp"]["fidelity"] == ours["fidelity"]
    assert "faithfulness" not in again["evaluation"]
    assert "\n## Faithfulness\n" not in (tmp_path / "report" / "report.md").read_text()
    assert not (tmp_path / "report" / "faithfulness_curves.png").exists()
