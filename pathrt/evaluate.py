"""`pathrt evaluate`: the SPEC §7 comparison table of GEN-CNP and every baseline on one data split.

Rows: GEN-CNP at its operating point; random pathways (matched per sample); critical pathways at
the generator's mean sparsity (one global percentile) and at matched per-sample sizes; DGR at its
own operating point (gates > 0) and at matched per-sample sizes. Columns: sparsity mean ± std,
fidelity, mIC, mDC, IC rate, acIOU, transfer mIC/mDC (class pathways built from each method's
pathways of up to j correctly classified source images per class, applied to the evaluated
images), ms per explanation (producing the pathway and scoring it: plain + pathway pass) and the
target passes each method needs to produce a pathway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from pathrt.artifacts import write_json
from pathrt.baselines import (
    channel_contributions,
    dgr_gates,
    kept_for_sparsity,
    random_masks,
    top_k_masks,
)
from pathrt.baselines.common import explanation_from_scores
from pathrt.faithfulness import FIGURES, evaluate_faithfulness, write_faithfulness
from pathrt.metrics import summarize
from pathrt.report import markdown_table
from pathrt.runtime.explainer import Explainer
from pathrt.runtime.explanation import Explanation
from pathrt.transfer import build_class_pathways, evaluate_transfer


@dataclass
class MethodRow:
    """One row of the table: which method, at which setting, and what it measured."""

    method: str
    setting: str
    passes: str
    seconds: float
    metrics: dict[str, Any]
    transfer: dict[str, float]
    explanation: Explanation = field(repr=False)  # the evaluated images' pathways, scores = the method's own

    def cells(self, count: int) -> list[str]:
        m, sp = self.metrics, self.metrics["sparsity"]
        return [self.method, self.setting, f"{100 * sp['mean']:.1f} ± {100 * sp['std']:.1f}", f"{m['fidelity']:.1f}",
                f"{m['balanced_fidelity']:.1f}", f"{m['mIC']:.2f}", f"{m['mDC']:.2f}", f"{m['ic_rate']:.1f}",
                f"{m['acIOU']:.1f}",
                f"{self.transfer['mIC']:.2f} / {self.transfer['mDC']:.2f}", f"{1000 * self.seconds / count:.2f}",
                self.passes]


HEADERS = ["method", "setting", "sparsity % mean ± std", "fidelity %", "balanced fidelity %", "mIC", "mDC",
           "IC rate %", "acIOU %", "transfer mIC / mDC", "ms/explanation", "passes of H per pathway"]


def source_indices(explainer: Explainer, images: torch.Tensor, labels: torch.Tensor, j: int) -> torch.Tensor:
    """Indices of the first `j` correctly classified images of every class (the transfer sources)."""
    with torch.no_grad():
        predicted = explainer.predict(images)
    picked = [torch.nonzero((labels == c) & (predicted == c)).flatten()[:j] for c in torch.unique(labels)]
    return torch.cat(picked).sort().values


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def evaluate(explainer: Explainer, images: torch.Tensor, labels: torch.Tensor, source_images: torch.Tensor,
             source_labels: torch.Tensor, *, j: int = 50, seed: int = 0, include_dgr: bool = True,
             log: Callable[[str], None] = print) -> list[MethodRow]:
    """Every method on (`images`, `labels`); transfer sources come from (`source_images`, `source_labels`)."""
    index = source_indices(explainer, source_images, source_labels, j)
    src, src_labels = source_images[index], source_labels[index]
    num_classes = explainer.target.num_classes
    rows: list[MethodRow] = []

    def add(method: str, setting: str, passes: str, seconds: float, ours: Explanation, sources: Explanation) -> None:
        pathways = build_class_pathways(sources, src_labels, num_classes, explainer.target.fingerprint, j=j)
        own = evaluate_transfer(explainer, images, pathways, seed)["own class"]
        rows.append(MethodRow(method, setting, passes, seconds, summarize(ours, labels), own, ours))
        log(f"  {method} ({setting}): fidelity {rows[-1].metrics['fidelity']:.1f}% (balanced "
            f"{rows[-1].metrics['balanced_fidelity']:.1f}%), "
            f"sparsity {100 * rows[-1].metrics['sparsity']['mean']:.1f}%, {seconds:.1f} s")

    reference, seconds = _timed(lambda: explainer.explain(images))
    reference_src = explainer.explain(src)
    add("GEN-CNP", "operating point", "1 forward + generator", seconds, reference, reference_src)
    mean_sparsity = float(reference.sparsity.mean())

    def random_of(ref: Explanation, x: torch.Tensor) -> Explanation:
        masks = random_masks(ref.kept, ref.spec.total_channels, torch.Generator().manual_seed(seed))
        return explainer.explain_with_masks(x, masks, ref.classes, label="random")

    test, seconds = _timed(lambda: random_of(reference, images))
    add("random", "matched per sample", "0", seconds, test, random_of(reference_src, src))

    scorers: list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = [
        ("critical pathways", "1 forward + 1 backward", lambda x: channel_contributions(explainer, x),
         lambda s: top_k_masks(s, kept_for_sparsity(len(s), s.shape[1], mean_sparsity))),
    ]
    if include_dgr:
        scorers.append(("DGR", "31 forward + 30 backward", lambda x: dgr_gates(explainer, x), lambda s: s > 0))
    for method, passes, score, own_setting in scorers:
        scores, seconds = _timed(lambda score=score: score(images))
        scores_src = score(src)
        for setting, pick, pick_src in (
            ("own operating point", own_setting(scores), own_setting(scores_src)),
            ("matched per sample", top_k_masks(scores, reference.kept), top_k_masks(scores_src, reference_src.kept)),
        ):
            test, scoring = _timed(lambda pick=pick, scores=scores, method=method: explanation_from_scores(
                explainer, images, scores, pick, method))
            add(method, setting, passes, seconds + scoring, test,
                explanation_from_scores(explainer, src, scores_src, pick_src, method))
    return rows


def faithfulness_inputs(rows: list[MethodRow], seed: int = 0) -> tuple[dict[str, torch.Tensor],
                                                                       list[tuple[str, str, Explanation]]]:
    """What `pathrt.faithfulness.evaluate_faithfulness` needs from the table's rows: each method's own
    neuron order (GEN-CNP: generator scores; critical pathways: contributions; DGR: gates; random: a
    seeded permutation) and every row's pathways, GEN-CNP's first."""
    reference = rows[0].explanation
    orders = {"GEN-CNP": reference.scores}
    orders.update({r.method: r.explanation.scores for r in rows
                   if r.setting == "own operating point" and r.method not in orders})
    orders["random"] = torch.rand(reference.scores.shape, generator=torch.Generator().manual_seed(seed))
    return orders, [(r.method, r.setting, r.explanation) for r in rows]


def run_faithfulness(explainer: Explainer, images: torch.Tensor, rows: list[MethodRow], train_images: torch.Tensor,
                     *, steps: int = 10, flip: bool = False, seed: int = 0,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """The Faithfulness protocols on the table's rows; measures the target's channel means on
    `train_images` (preprocessed) first when it has none stored (mean ablation's fill)."""
    if explainer.target.channel_means is None:
        log(f"the target has no stored channel means: measuring them on {len(train_images)} training images")
        explainer.target.measure_channel_means(train_images)
    log("faithfulness protocols:")
    orders, pathways = faithfulness_inputs(rows, seed)
    return evaluate_faithfulness(explainer, images, orders, pathways, steps=steps, flip=flip, seed=seed, log=log)


def plot_fidelity_vs_sparsity(rows: list[MethodRow], path: Path) -> Path:
    """One point per method row: mean sparsity vs fidelity. Hollow markers of decreasing size, so rows
    at the same point (DGR and GEN-CNP often are) all stay visible."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "os^vDP*X"
    for i, row in enumerate(rows):
        ax.scatter([100 * row.metrics["sparsity"]["mean"]], [row.metrics["fidelity"]], s=190 - 18 * i,
                   marker=markers[i % 8], facecolors="none", edgecolors=f"C{i}", linewidths=1.6,
                   label=f"{row.method} ({row.setting})", zorder=3 + i)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_xlabel("mean sparsity (% of neurons removed)")
    ax.set_ylabel("fidelity (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(-5, 105)
    ax.set_title("Fidelity vs sparsity", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _by_class(rows: list[MethodRow]) -> str:
    """Per-class fidelity of every row and the pathway-prediction histogram, with any dominance warning
    (balanced fidelity is the mean of the per-class figures: a majority class cannot carry it)."""
    classes = len(rows[0].metrics["prediction_histogram"])
    headers = ["method", "setting", *(f"class {c}" for c in range(classes))]
    cells = [[r.method, r.setting, *(f"{r.metrics['fidelity_by_class'][c]:.0f}" if c in r.metrics["fidelity_by_class"]
                                     else "-" for c in range(classes))] for r in rows]
    hist = [["plain model", "predictions", *map(str, rows[0].metrics["prediction_histogram"])]]
    hist += [[r.method, r.setting, *map(str, r.metrics["pathway_prediction_histogram"])] for r in rows]
    warnings = "".join(f"\n> **warning** ({r.method}, {r.setting}): {r.metrics['warning']}\n" for r in rows
                       if r.metrics["warning"])
    return (f"## Fidelity per class of the plain prediction (%)\n\n{markdown_table(headers, cells)}\n{warnings}\n"
            f"## Predictions per class (pathway models against the plain model)\n\n{markdown_table(headers, hist)}\n")


def write_evaluation(rows: list[MethodRow], count: int, folder: Path,
                     faithfulness: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Writes evaluation.json, evaluation.md and evaluation.png (and the faithfulness figures when its
    data is given) into `folder`; returns (markdown table, JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = markdown_table(HEADERS, [row.cells(count) for row in rows])
    data: dict[str, Any] = {"count": count, "rows": [
        {"method": r.method, "setting": r.setting, "passes": r.passes, "ms_per_explanation": 1000 * r.seconds / count,
         "metrics": r.metrics, "transfer_own_class": r.transfer} for r in rows]}
    section = ""
    if faithfulness is not None:
        data["faithfulness"] = faithfulness
        section = write_faithfulness(faithfulness, folder)
    else:  # no figures of an earlier run left beside a report that does not show them
        for name in FIGURES:
            (folder / name).unlink(missing_ok=True)
    write_json(folder / "evaluation.json", data)
    (folder / "evaluation.md").write_text(f"# pathrt evaluate ({count} images)\n\n{table}\n\n{_by_class(rows)}\n"
                                          f"![fidelity vs sparsity](evaluation.png)\n\n{section}", encoding="utf-8")
    plot_fidelity_vs_sparsity(rows, folder / "evaluation.png")
    return table, data
