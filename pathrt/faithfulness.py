"""Faithfulness protocols beyond one operating point: what a reviewer asks of a pathway method.

Everything here reuses what pathrt computes anyway (masks, per-neuron scores, logits) and runs
batched through `Explainer.explain_with_masks`, i.e. on the explainer's own backend:

- **Deletion / insertion curves in neuron space.** Rank each image's neurons by a method's own
  order (GEN-CNP: generator score; critical pathways: contribution; DGR: gate; random: a seeded
  permutation). Deletion removes the top fraction f first (most relevant first, MoRF); insertion
  keeps only the top fraction f. The curve is the mean probability of the explained class under
  the pathway model at f = 0, 1/S, ..., 1; its AUC is the trapezoid mean over f (deletion: lower is
  better; insertion: higher is better). Neuron-space analogues of RISE's pixel curves.
- **Sufficiency and comprehensiveness.** Keep only the pathway (sufficiency: mDC and fidelity, as
  the main table) and remove the pathway while keeping the rest (comprehensiveness: the drop in
  confidence should be large and fidelity low), over all layers and one layer at a time (the other
  layers whole).
- **Ablation value.** A removed channel is 0 (zero ablation, the paper's and SPEC §1's definition)
  or its mean activation over the training split (mean ablation, `Target.channel_means`): a result
  that holds under both does not hinge on pushing activations off their distribution.
- **Sanity check** (model-parameter randomization, Adebayo et al. 2018, cascading): re-initialize
  the target's conv/linear layers from the top down, one more at each step, and run the same
  generator on the randomized target: its pathways should diverge from the trained target's
  (IoU per step). A generator that ignored the target would keep IoU 1.
- **Stability.** IoU of an image's pathway with the pathway of the same image under small input
  noise (and a horizontal flip where the data allow it), against the IoU between different images
  of the same class: an explanation should move less under noise than between images.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

from pathrt.baselines.common import top_k_masks
from pathrt.errors import InputError
from pathrt.metrics import aciou, confidence, paired_iou
from pathrt.report import markdown_table
from pathrt.runtime.explainer import Explainer
from pathrt.runtime.explanation import Explanation
from pathrt.runtime.ops import pack_masks
from pathrt.targets import seeded

ABLATIONS = ("zero", "mean")
FIGURES = ("faithfulness_curves.png", "faithfulness_randomization.png")  # what `write_faithfulness` writes
NOISE_LEVELS = (0.02, 0.05, 0.1)  # std of Gaussian pixel noise, in units of the [0, 1] pixel range


def ablation_fill(explainer: Explainer, ablation: str) -> torch.Tensor | None:
    """The removed-channel values of an ablation: None (zero) or the target's channel means (mean)."""
    if ablation == "zero":
        return None
    if ablation != "mean":
        raise InputError(f"unknown ablation {ablation!r}; use one of {ABLATIONS}")
    means = explainer.target.channel_means
    if means is None:
        raise InputError("mean ablation needs the target's channel means: call target.measure_channel_means("
                         "target.preprocess(train_images)) and save the target (pathrt train-target stores them)")
    return means


def _pass(explainer: Explainer, images: torch.Tensor, masks: torch.Tensor, classes: torch.Tensor,
          fill: torch.Tensor | None) -> Explanation:
    return explainer.explain_with_masks(images, masks, classes, label="faithfulness", fill=fill)


def _ablated(explainer: Explainer, images: torch.Tensor, pathway: Explanation,
             fill: torch.Tensor | None) -> Explanation:
    """`pathway` under an ablation: itself under zero ablation (its pathway pass already ran), else one
    pathway pass of its masks with `fill`."""
    return pathway if fill is None else _pass(explainer, images, pathway.masks, pathway.classes, fill)


def neuron_curves(explainer: Explainer, images: torch.Tensor, order: torch.Tensor, classes: torch.Tensor,
                  steps: int = 10, fill: torch.Tensor | None = None) -> dict[str, dict[str, Any]]:
    """Deletion and insertion curves for per-image neuron scores `order` (N, K), higher = more
    relevant: {"deletion"|"insertion": {"fractions", "probability", "auc"}} (see the module docstring)."""
    if steps < 1:
        raise InputError(f"curves need at least 1 step, got {steps}")
    n, k = order.shape
    fractions = [i / steps for i in range(steps + 1)]
    # the ends need no pass of their own: every neuron kept is the plain model (Y), none kept is one pass
    empty = _pass(explainer, images, torch.zeros(n, k, dtype=torch.bool), classes, fill)
    whole, nothing = float(empty.Y.mean()), float(empty.O.mean())
    curves: dict[str, list[float]] = {"deletion": [whole], "insertion": [nothing]}
    for f in fractions[1:-1]:
        top = top_k_masks(order, torch.full((n,), round(f * k), dtype=torch.long))
        for name, masks in (("deletion", ~top), ("insertion", top)):
            curves[name].append(float(_pass(explainer, images, masks, classes, fill).O.mean()))
    curves["deletion"].append(nothing)
    curves["insertion"].append(whole)
    return {name: {"fractions": fractions, "probability": p,
                   "auc": sum((p[i] + p[i + 1]) / 2 for i in range(steps)) / steps}
            for name, p in curves.items()}


def _only_layer(spec_slice: slice, masks: torch.Tensor) -> torch.Tensor:
    """Masks that apply `masks` at one layer (the columns of `spec_slice`) and keep every other layer whole."""
    out = torch.ones_like(masks)
    out[:, spec_slice] = masks[:, spec_slice]
    return out


def sufficiency_comprehensiveness(explainer: Explainer, images: torch.Tensor, pathway: Explanation,
                                  fill: torch.Tensor | None = None, per_layer: bool = True,
                                  kept: Explanation | None = None) -> dict[str, Any]:
    """Keep only the pathway (sufficiency) and remove it keeping the rest (comprehensiveness), overall
    and, with `per_layer`, at one layer at a time: each a `confidence` dict. `kept`: the pathway's own
    pass under this fill when the caller ran it already."""
    masks, classes = pathway.masks, pathway.classes  # the explained class of every row is GEN-CNP's
    out: dict[str, Any] = {"overall": {
        "sufficiency": confidence(kept if kept is not None else _ablated(explainer, images, pathway, fill)),
        "comprehensiveness": confidence(_pass(explainer, images, ~masks, classes, fill)),
    }}
    if per_layer:
        out["per_layer"] = {}
        start = 0
        for layer in explainer.spec.layers:
            cols = slice(start, start + layer.channels)
            start += layer.channels
            out["per_layer"][layer.name] = {
                "sufficiency": confidence(_pass(explainer, images, _only_layer(cols, masks), classes, fill)),
                "comprehensiveness": confidence(_pass(explainer, images, _only_layer(cols, ~masks), classes, fill)),
            }
    return out


def pairwise_iou_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of row i of bool masks `a` with row i of `b` (N, K); two empty rows have IoU 1."""
    return paired_iou(pack_masks(a), pack_masks(b))


def cascading_randomization(explainer: Explainer, images: torch.Tensor, reference: Explanation,
                            seed: int = 0, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Re-initializes the target's conv and linear layers from the output down, one more per step, and
    explains `images` with the same generator on each randomized target (eager backend). Per step:
    the IoU of each image's pathway with its pathway on the trained target (mean, std), the share of
    plain predictions left unchanged, and the layer randomized last."""
    target = explainer.target
    model = copy.deepcopy(target.model)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)][::-1]
    steps = []
    for i, (name, module) in enumerate(layers):
        with seeded(seed + i):
            module.reset_parameters()
        randomized = dataclasses.replace(target, model=model)
        other = Explainer(randomized, explainer.generator, backend="eager", allow_other_target=True,
                          max_batch_size=explainer.max_batch_size)
        explained = other.explain(images)
        iou = pairwise_iou_rows(explained.masks, reference.masks)
        steps.append({"layers": i + 1, "randomized_down_to": name, "iou": float(iou.mean()),
                      "iou_std": float(iou.std()) if len(iou) > 1 else 0.0,
                      "predictions_unchanged": 100 * float((explained.classes == reference.logits.argmax(1))
                                                           .float().mean())})
        log(f"  randomized {i + 1}/{len(layers)} layers (down to {name}): pathway IoU with the trained "
            f"target {steps[-1]['iou']:.3f}")
    return steps


def stability(explainer: Explainer, images: torch.Tensor, reference: Explanation,
              noise: tuple[float, ...] = NOISE_LEVELS, flip: bool = False, seed: int = 0) -> dict[str, Any]:
    """IoU of each image's pathway with the pathway of the same image perturbed (Gaussian pixel noise of
    each std in `noise`, in [0, 1] pixel units; a horizontal flip when `flip`), against the mean IoU
    between different images of the same class (acIOU's pairs)."""
    std = torch.tensor(explainer.target.std, dtype=images.dtype).view(1, -1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    perturbed = {f"noise std {s:g}": images + s * torch.randn(images.shape, generator=g) / std for s in noise}
    if flip:
        perturbed["horizontal flip"] = images.flip(3)
    rows = {}
    for name, x in perturbed.items():
        explained = explainer.explain(x)
        iou = pairwise_iou_rows(explained.masks, reference.masks)
        rows[name] = {"iou": float(iou.mean()), "iou_std": float(iou.std()) if len(iou) > 1 else 0.0,
                      "predictions_unchanged": 100 * float((explained.classes == reference.classes).float().mean())}
    return {"perturbations": rows, "between_images_same_class": aciou(reference) / 100}


def plot_curves(curves: dict[str, dict[str, dict[str, dict[str, Any]]]], path: Path) -> Path:
    """Deletion and insertion curves: one colour per method, solid for zero and dashed for mean ablation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = dict(zip(curves, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for method, by_ablation in curves.items():
            for ablation, style in (("zero", "-"), ("mean", "--")):
                if ablation in by_ablation:
                    c = by_ablation[ablation][kind]
                    ax.plot([100 * f for f in c["fractions"]], c["probability"], style, color=colours[method],
                            marker="o", markersize=3, label=f"{method}, {ablation} (AUC {c['auc']:.3f})")
        ax.set_xlabel(f"% of neurons {'removed, most relevant first' if kind == 'deletion' else 'kept, most relevant'}")
        ax.set_ylabel("probability of the explained class")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{kind.capitalize()} ({'lower' if kind == 'deletion' else 'higher'} AUC is better)",
                     fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_randomization(steps: list[dict[str, Any]], path: Path) -> Path:
    """Pathway IoU with the trained target against the number of layers randomized from the top."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = [0, *(s["layers"] for s in steps)]
    y = [1.0, *(s["iou"] for s in steps)]
    ax.plot(x, y, marker="o")
    ax.set_xticks(x, ["trained", *(s["randomized_down_to"] for s in steps)], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("pathway IoU with the trained target")
    ax.set_ylim(0, 1.05)
    ax.set_title("Cascading parameter randomization (top layer first)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cells(m: dict[str, float]) -> list[str]:
    return [f"{m['fidelity']:.1f}", f"{m['mDC']:.2f}", f"{m['mIC']:.2f}", f"{m['ic_rate']:.1f}"]


def markdown_section(data: dict[str, Any]) -> str:
    """The report's "Faithfulness" section from `evaluate_faithfulness`'s data (figures beside it)."""
    parts = ["## Faithfulness", "Each protocol in a few lines: what it measures, why, and how to read it."]
    curves = data["curves"]
    parts += [
        "### Deletion and insertion curves (neuron space)",
        "Neurons ranked per image by each method's own order (GEN-CNP: generator score; critical pathways: "
        "contribution; DGR: gate; random: a seeded permutation). Deletion removes the top f first: the "
        "explained class's probability should fall fast (lower AUC is better). Insertion keeps only the top f: "
        "it should rise fast (higher AUC is better).",
        markdown_table(["method", "deletion AUC, zero", "deletion AUC, mean", "insertion AUC, zero",
                        "insertion AUC, mean"],
                       [[m, *(f"{c[a][k]['auc']:.3f}" if a in c else "-" for k in ("deletion", "insertion")
                              for a in ABLATIONS)] for m, c in curves.items()]),
        "![deletion and insertion curves](faithfulness_curves.png)",
        "### Sufficiency and comprehensiveness",
        "Keep only the pathway (sufficiency: low mDC, high fidelity) and remove the pathway keeping the rest "
        "(comprehensiveness: the drop, mDC, should be large and fidelity low). Matched rows keep as many neurons "
        "per image as GEN-CNP.",
        markdown_table(["method", "ablation", "keep pathway: fidelity %", "mDC", "remove pathway: fidelity %",
                        "mDC (drop)"],
                       [[m, a, f"{r['overall']['sufficiency']['fidelity']:.1f}",
                         f"{r['overall']['sufficiency']['mDC']:.2f}",
                         f"{r['overall']['comprehensiveness']['fidelity']:.1f}",
                         f"{r['overall']['comprehensiveness']['mDC']:.2f}"]
                        for m, by_ablation in data["sufficiency"].items() for a, r in by_ablation.items()]),
    ]
    for a, r in data["sufficiency"]["GEN-CNP"].items():
        parts += [f"Per layer, GEN-CNP, {a} ablation (the pathway applied at that layer only):",
                  markdown_table(["layer", "keep: fidelity %", "keep: mDC", "remove: fidelity %", "remove: mDC"],
                                 [[name, f"{v['sufficiency']['fidelity']:.1f}", f"{v['sufficiency']['mDC']:.2f}",
                                   f"{v['comprehensiveness']['fidelity']:.1f}",
                                   f"{v['comprehensiveness']['mDC']:.2f}"]
                                  for name, v in r.get("per_layer", {}).items()])]
    parts += [
        "### Ablation value: zero against mean",
        "The same pathways with removed channels set to 0 (zero ablation, the paper's) or to their mean "
        "activation over the training split (mean ablation). A conclusion that holds under both does not "
        "depend on pushing activations off their distribution.",
        markdown_table(["method", "setting", "zero: fidelity %", "mDC", "mIC", "IC rate %", "mean: fidelity %",
                        "mDC", "mIC", "IC rate %"],
                       [[r["method"], r["setting"], *_cells(r["zero"]), *_cells(r["mean"])]
                        for r in data["ablation"]]),
        "### Sanity check: cascading model-parameter randomization",
        "The target's conv and linear layers are re-initialized from the top down, one more per step, and the "
        "same generator explains the randomized target. Its pathways should diverge from the trained target's "
        "(IoU falling well below 1); a generator blind to the target would keep IoU 1. Layers after the last "
        "pathway layer (the classifier) cannot change what the generator reads: IoU stays 1 until the first "
        "randomized layer feeds a pathway layer. The other-class row of the transfer table is the random-class "
        "test.",
        markdown_table(["layers randomized", "down to", "pathway IoU with trained (mean ± std)",
                        "plain predictions unchanged %"],
                       [[s["layers"], s["randomized_down_to"], f"{s['iou']:.3f} ± {s['iou_std']:.3f}",
                         f"{s['predictions_unchanged']:.1f}"] for s in data["randomization"]]),
        "![randomization](faithfulness_randomization.png)",
        "### Stability",
        "IoU of an image's pathway with the pathway of the same image under a small perturbation, against the "
        f"IoU between different images of the same class ({data['stability']['between_images_same_class']:.3f}). "
        "Stable explanations move less under noise than between images. " + data["stability_note"],
        markdown_table(["perturbation", "IoU with the unperturbed pathway (mean ± std)", "predictions unchanged %"],
                       [[name, f"{r['iou']:.3f} ± {r['iou_std']:.3f}", f"{r['predictions_unchanged']:.1f}"]
                        for name, r in data["stability"]["perturbations"].items()]),
    ]
    return "\n\n".join(parts) + "\n"


def evaluate_faithfulness(explainer: Explainer, images: torch.Tensor, orders: dict[str, torch.Tensor],
                          pathways: list[tuple[str, str, Explanation]], *, steps: int = 10,
                          noise: tuple[float, ...] = NOISE_LEVELS, flip: bool = False, seed: int = 0,
                          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every protocol of the module docstring on `images` (preprocessed).

    `orders`: per method, neuron scores (N, K) (higher = more relevant) for the curves; `pathways`:
    (method, setting, Explanation) rows whose masks are scored under both ablations, GEN-CNP's first
    (its pathway is also the one of the per-layer, randomization and stability protocols; matched rows
    get sufficiency and comprehensiveness too). The explained class is GEN-CNP's throughout. Returns
    JSON-ready data (see `markdown_section`)."""
    if not pathways or pathways[0][0] != "GEN-CNP":
        raise InputError("the first pathway row must be GEN-CNP's")
    reference = pathways[0][2]
    classes = reference.classes  # the explained class of the curves: GEN-CNP's
    fills = {a: ablation_fill(explainer, a) for a in ABLATIONS}
    data: dict[str, Any] = {"steps": steps, "curves": {}, "sufficiency": {}, "ablation": []}
    for method, order in orders.items():
        data["curves"][method] = {a: neuron_curves(explainer, images, order, classes, steps, fill)
                                  for a, fill in fills.items()}
        log(f"  curves {method}: deletion AUC {data['curves'][method]['zero']['deletion']['auc']:.3f}, "
            f"insertion AUC {data['curves'][method]['zero']['insertion']['auc']:.3f} (zero ablation)")
    for i, (method, setting, explanation) in enumerate(pathways):
        kept = {a: _ablated(explainer, images, explanation, fill) for a, fill in fills.items()}
        data["ablation"].append({"method": method, "setting": setting, **{a: confidence(e) for a, e in kept.items()}})
        if i == 0 or setting.startswith("matched"):
            data["sufficiency"]["GEN-CNP" if i == 0 else f"{method} ({setting})"] = {
                a: sufficiency_comprehensiveness(explainer, images, explanation, fill, i == 0, kept[a])
                for a, fill in fills.items()}
    log("  sufficiency / comprehensiveness and ablation rows done; randomizing the target")
    data["randomization"] = cascading_randomization(explainer, images, reference, seed, log)
    data["stability"] = stability(explainer, images, reference, noise, flip, seed)
    data["stability_note"] = ("A horizontal flip is included." if flip else
                              "No flip: these images change meaning when mirrored (pass flip=True where they do not).")
    return data


def write_faithfulness(data: dict[str, Any], folder: Path) -> str:
    """Writes the section's figures into `folder`; returns its Markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_curves(data["curves"], folder / FIGURES[0])
    plot_randomization(data["randomization"], folder / FIGURES[1])
    return markdown_section(data)
