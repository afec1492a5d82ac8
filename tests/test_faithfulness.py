"""Faithfulness protocols: published metric definitions, mean ablation on every backend, curves,
sufficiency/comprehensiveness, randomization and stability, progress logging."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from pathrt import faithfulness, metrics, opspec
from pathrt.errors import ArtifactError, InputError
from pathrt.evaluate import evaluate, faithfulness_inputs, write_evaluation
from pathrt.progress import LogProgress, progress_bar
from pathrt.runtime import Explainer, ops
from pathrt.targets import create_target, load_target, pathway_forward, save_target
from tests.conftest import tiny_evaluation, torchvision_target, varied_generator


def _confidences(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(200, generator=g) * 0.9 + 0.05
    o = torch.rand(200, generator=g)
    o[:10] = y[:10]  # ties: neither a drop nor an increase
    return y, o


def test_confidence_metrics_match_the_published_definitions() -> None:
    """Grad-CAM++'s Average Drop and Increase in Confidence, as torchcam's ClassificationMetric and
    pytorch-grad-cam's DropInConfidence / IncreaseInConfidence write them (formulas copied by hand)."""
    y, o = _confidences()
    # torchcam: drop = relu(probs - masked_probs) / (probs + 1e-7); increase = probs < masked_probs; means
    torchcam_avg_drop = float((torch.relu(y - o) / (y + 1e-7)).mean())
    torchcam_conf_increase = float((y < o).float().mean())
    assert metrics.mdc(y, o) == pytest.approx(100 * torchcam_avg_drop, rel=1e-5)
    assert metrics.ic_rate(y, o) == pytest.approx(100 * torchcam_conf_increase, abs=1e-9)
    # pytorch-grad-cam: scores = after - before; DropInConfidence = max(-scores, 0) per image (not divided by
    # the original confidence: the paper's Average Drop divides it, so ours = 100 * mean(drop / Y));
    # IncreaseInConfidence = float32(scores > 0) per image
    scores = (o - y).numpy()
    drop_in_confidence = torch.from_numpy((-scores).clip(min=0))
    increase_in_confidence = torch.from_numpy((scores > 0).astype("float32"))
    assert metrics.mdc(y, o) == pytest.approx(float(100 * (drop_in_confidence / y).mean()), rel=1e-6)
    assert metrics.ic_rate(y, o) == pytest.approx(float(100 * increase_in_confidence.mean()), abs=1e-9)
    assert metrics.ic_rate(y, o) < 100 and metrics.mdc(y, o) > 0  # the sample has drops, rises and ties


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("inplace", [False, True])
def test_masked_bias_relu_fill_matches_the_reference(layout: str, inplace: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 5, 4, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    bias, fill = torch.randn(7, generator=g), torch.randn(7, generator=g)
    mask = torch.rand(3, 7, generator=g) > 0.5
    want = opspec.masked_bias_relu_reference(x, bias, mask, fill)
    got = ops.masked_bias_relu(x.clone(), bias, mask, inplace=inplace, fill=fill)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    removed = ~mask[:, :, None, None].expand_as(got)
    assert torch.equal(got[removed], fill[None, :, None, None].expand_as(got)[removed])
    without = ops.masked_bias_relu(x.clone(), bias, mask)
    assert bool((without[removed] == 0).all()) and not torch.equal(without, got)
    with pytest.raises(ValueError, match="fill must be float32 of shape"):
        ops.masked_bias_relu(x, bias, mask, fill=fill[:3])
    torch.library.opcheck(torch.ops.pathrt.masked_bias_relu.default, (x, bias, mask, fill))


def _mean_ablation_setup(arch: str):
    target = torchvision_target(arch) if arch != "small_vgg" else create_target(
        "small_vgg", 10, (3, 32, 32), cfg=(8, "M", 16, "M", 16), hidden=16)
    images = torch.randn(6, *target.spec.input_shape, generator=torch.Generator().manual_seed(2))
    target.measure_channel_means(torch.randn(8, *target.spec.input_shape, generator=torch.Generator().manual_seed(3)))
    masks = torch.rand(6, target.spec.total_channels, generator=torch.Generator().manual_seed(4)) > 0.4
    return target, images, masks


@pytest.mark.parametrize("arch", ["small_vgg", "resnet18", "vgg11"])
def test_mean_ablation_agrees_on_every_backend(arch: str) -> None:
    target, images, masks = _mean_ablation_setup(arch)
    generator = varied_generator(target.spec)
    means = target.channel_means
    eager = Explainer(target, generator, backend="eager")
    want = eager.explain_with_masks(images, masks, fill=means)
    with torch.no_grad():  # the eager reference is the hook-based pathway model with mean-filled channels
        direct = pathway_forward(eager.model, target.spec, images, masks, fill=means)
    torch.testing.assert_close(want.pathway_logits, direct)
    zero = eager.explain_with_masks(images, masks)
    assert (want.pathway_logits - zero.pathway_logits).abs().max() > 1e-3  # the fill changes the result
    filled_with_zeros = eager.explain_with_masks(images, masks, fill=torch.zeros_like(means))
    torch.testing.assert_close(filled_with_zeros.pathway_logits, zero.pathway_logits, rtol=1e-5, atol=1e-5)
    for backend in ("native", "session"):
        fast = Explainer(target, generator, backend=backend).explain_with_masks(images, masks, fill=means)
        torch.testing.assert_close(fast.pathway_logits, want.pathway_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.logits, want.logits, rtol=1e-4, atol=1e-4)
    everything = eager.explain_with_masks(images, torch.ones_like(masks), fill=means)
    torch.testing.assert_close(everything.pathway_logits, everything.logits, rtol=1e-5, atol=1e-5)


def test_mean_ablation_is_refused_with_wrong_values() -> None:
    target, images, masks = _mean_ablation_setup("small_vgg")
    explainer = Explainer(target, varied_generator(target.spec), backend="eager")
    with pytest.raises(InputError, match="fill must be a"):
        explainer.explain_with_masks(images, masks, fill=torch.zeros(3))
    with pytest.raises(InputError, match="finite"):
        explainer.explain_with_masks(images, masks, fill=torch.full((target.spec.total_channels,), float("nan")))


def test_channel_means_are_measured_stored_and_checked(tmp_path: Path) -> None:
    target, _, _ = _mean_ablation_setup("small_vgg")
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    means = target.measure_channel_means(x, batch_size=2)
    with torch.no_grad():
        features = target.capture(x).features
    torch.testing.assert_close(means, torch.cat([f.mean((0, 2, 3)) for f in features]), rtol=1e-5, atol=1e-6)
    save_target(target, tmp_path / "t")
    assert torch.equal(load_target(tmp_path / "t").channel_means, means)
    sidecar = tmp_path / "t.json"
    meta = json.loads(sidecar.read_text())
    meta["info"]["channel_means"]["values"] = meta["info"]["channel_means"]["values"][:-1]
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="channel means"):
        load_target(tmp_path / "t")


def test_neuron_curves_end_where_they_must() -> None:
    target, images, _ = _mean_ablation_setup("small_vgg")
    explainer = Explainer(target, varied_generator(target.spec), backend="native")
    reference = explainer.explain(images)
    order = torch.rand(reference.scores.shape, generator=torch.Generator().manual_seed(0))
    curves = faithfulness.neuron_curves(explainer, images, order, reference.classes, steps=4)
    deletion, insertion = curves["deletion"]["probability"], curves["insertion"]["probability"]
    plain = float(reference.Y.mean())
    assert deletion[0] == pytest.approx(plain, abs=1e-5) and insertion[-1] == pytest.approx(plain, abs=1e-5)
    nothing = explainer.explain_with_masks(images, torch.zeros_like(reference.masks), reference.classes)
    assert deletion[-1] == pytest.approx(float(nothing.O.mean()), abs=1e-5) == insertion[0]
    p = deletion
    assert curves["deletion"]["auc"] == pytest.approx((p[0] / 2 + p[1] + p[2] + p[3] + p[4] / 2) / 4)
    with pytest.raises(InputError, match="at least 1 step"):
        faithfulness.neuron_curves(explainer, images, order, reference.classes, steps=0)


def test_randomization_and_stability_are_measured_honestly() -> None:
    target = torchvision_target("resnet18")  # random weights, but features that vary from image to image
    images = torch.randn(6, *target.spec.input_shape, generator=torch.Generator().manual_seed(2))
    explainer = Explainer(target, varied_generator(target.spec, seed=1), backend="native")
    reference = explainer.explain(images)
    before = target.fingerprint
    steps = faithfulness.cascading_randomization(explainer, images, reference, log=lambda _: None)
    assert target.fingerprint == before  # the trained target is untouched
    assert [s["layers"] for s in steps] == list(range(1, 22))
    assert [s["randomized_down_to"] for s in (steps[0], steps[-1])] == ["fc", "conv1"]
    assert steps[0]["iou"] == 1.0  # fc lies after the last pathway layer: the generator cannot see it
    assert all(0.0 <= s["iou"] <= 1.0 for s in steps) and steps[-1]["iou"] < 0.95
    same = faithfulness.stability(explainer, images, reference, noise=(0.0,), flip=True)
    assert same["perturbations"]["noise std 0"] == {"iou": 1.0, "iou_std": 0.0, "predictions_unchanged": 100.0}
    assert same["perturbations"]["horizontal flip"]["iou"] < 1.0
    assert 0.0 <= same["between_images_same_class"] <= 1.0
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert faithfulness.pairwise_iou_rows(a, b).tolist() == [pytest.approx(1 / 3), 1.0]


def test_evaluation_writes_the_faithfulness_section(tmp_path: Path) -> None:
    explainer, images, labels, sources, source_labels = tiny_evaluation(10, 20)
    target = explainer.target
    rows = evaluate(explainer, images, labels, sources, source_labels, j=3, log=lambda _: None)
    with pytest.raises(InputError, match="channel means"):
        faithfulness.ablation_fill(explainer, "mean")
    target.measure_channel_means(sources)
    orders, pathways = faithfulness_inputs(rows)
    assert list(orders) == ["GEN-CNP", "critical pathways", "DGR", "random"]
    data = faithfulness.evaluate_faithfulness(explainer, images, orders, pathways, steps=2, log=lambda _: None)
    _, written = write_evaluation(rows, len(images), tmp_path, data)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["faithfulness"]["curves"]["DGR"]["mean"]["insertion"]["auc"] == written["faithfulness"][
        "curves"]["DGR"]["mean"]["insertion"]["auc"]
    assert set(saved["faithfulness"]["sufficiency"]) == {"GEN-CNP", "random (matched per sample)",
                                                         "critical pathways (matched per sample)",
                                                         "DGR (matched per sample)"}
    assert len(saved["faithfulness"]["ablation"]) == len(rows)
    page = (tmp_path / "evaluation.md").read_text()
    for heading in ("\n## Faithfulness\n", "### Deletion and insertion curves", "### Sufficiency and comprehensiveness",
                    "### Ablation value", "### Sanity check", "### Stability"):
        assert heading in page
    assert (tmp_path / "faithfulness_curves.png").stat().st_size > 0
    assert (tmp_path / "faithfulness_randomization.png").stat().st_size > 0


def test_progress_in_logs_is_a_line_every_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    clock = iter(range(0, 10_000))
    monkeypatch.setattr("pathrt.progress.time.monotonic", lambda: float(next(clock)))
    bar = LogProgress(600, "train", unit="step", interval=50.0, file=out)
    for step in range(600):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 14, lines  # ~1200 clock ticks / 50 s interval, not 600 updates
    assert lines[-1].startswith("train: 600/600 step (100%), loss=0.002")
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(10, "x"), LogProgress)
