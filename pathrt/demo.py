"""`pathrt demo` (what `make demo` runs): GEN-CNP end to end on the embedded default data set.

Trains (or reuses) the small VGG target and its generator on scikit-learn's digits, explains the
test split, computes the SPEC §5 metrics,
compares GEN-CNP with random, critical-pathway and DGR baselines (`pathrt evaluate`'s table),
builds class pathways from the training split and evaluates their transfer on the test split,
and writes a report folder (Markdown + HTML + figures). Everything is cached in the work folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pathrt.artifacts import artifact_paths, write_json
from pathrt.data import TensorImageDataset, load_digits
from pathrt.errors import ArtifactError
from pathrt.evaluate import evaluate, run_faithfulness, write_evaluation
from pathrt.faithfulness import markdown_section
from pathrt.flops import count_flops
from pathrt.generator import GeneratorConfig, PathwayGenerator, load_generator
from pathrt.report import (
    markdown_table,
    plot_class_heatmaps,
    plot_saliency,
    plot_sparsity_histogram,
    plot_transfer,
    write_report,
)
from pathrt.runtime.explainer import Explainer, saliency_map
from pathrt.targets import Target, capture_features, load_target, save_target
from pathrt.targets.training import TargetTrainingConfig, train_target
from pathrt.training import GeneratorTrainingConfig, train_generator
from pathrt.transfer import build_class_pathways, evaluate_transfer

# The transfer rows as the report names them: another class's pathway is the random-class test.
TRANSFER_LABELS = {"other class": "other class (random-class test)"}


def get_demo_target(workdir: Path, train: TensorImageDataset, test: TensorImageDataset, retrain: bool = False,
                    progress: bool = True) -> tuple[Target, bool]:
    """The cached demo target in `workdir`, or one freshly trained on `train`; (target, reused)."""
    stem = workdir / "target"
    if not retrain and artifact_paths(stem)[1].exists():
        try:
            return load_target(stem, arch="small_vgg"), True
        except ArtifactError as exc:
            print(f"cached target unusable ({exc}); training again")
    print(f"training the target (cached at {artifact_paths(stem)[0]} afterwards)")
    return train_target(train, test, TargetTrainingConfig(), out=stem, progress=progress), False


def get_demo_generator(workdir: Path, target: Target, train: TensorImageDataset, test: TensorImageDataset,
                       config: GeneratorTrainingConfig, retrain: bool = False,
                       progress: bool = True) -> tuple[PathwayGenerator, bool]:
    """The cached generator (same target and training config), or a freshly trained one."""
    stem = workdir / "generator"
    if not retrain and artifact_paths(stem)[1].exists():
        try:
            generator, meta = load_generator(stem, target_fingerprint=target.fingerprint, spec=target.spec)
            if meta["info"].get("training") == asdict(config) and meta["info"].get("step") == config.steps:
                return generator, True
            print("cached generator was trained with other settings; training again")
        except ArtifactError as exc:
            print(f"cached generator unusable ({exc}); training again")
    print(f"training the generator, {config.steps} steps (cached at {artifact_paths(stem)[0]} afterwards)")
    generator, _ = train_generator(target, train, test, GeneratorConfig.small(), config, out=stem, progress=progress)
    return generator, False


def run_demo(workdir: str | Path = "runs/demo", retrain: bool = False, progress: bool = True,
             seed: int = 0, steps: int | None = None, faithfulness: bool = True) -> dict[str, Any]:
    """Runs the demo, prints the table, writes the report into `workdir/report`; returns the summary.
    `faithfulness=False` leaves out the report's Faithfulness section (about 175 more pathway passes)."""
    start = time.perf_counter()
    out = Path(workdir)
    train, test = load_digits("train"), load_digits("test")
    print(f"data: scikit-learn digits at 32x32, {len(train)} train / {len(test)} test images")
    target, target_reused = get_demo_target(out, train, test, retrain, progress)
    if target.channel_means is None:  # a target cached before mean ablation existed
        print("measuring the target's channel means on the training split (mean ablation)")
        target.measure_channel_means(target.preprocess(train.images))
        save_target(target, out / "target")
    config = GeneratorTrainingConfig() if steps is None else GeneratorTrainingConfig(steps=steps)
    generator, generator_reused = get_demo_generator(out, target, train, test, config, retrain, progress)
    explainer = Explainer(target, generator)

    x = target.preprocess(test.images)
    report = out / "report"
    print("evaluating GEN-CNP and the baselines on the test split:")
    rows = evaluate(explainer, x, test.labels, target.preprocess(train.images), train.labels, seed=seed)
    protocols = run_faithfulness(explainer, x, rows, target.preprocess(train.images), seed=seed) if faithfulness \
        else None
    table, evaluation = write_evaluation(rows, len(x), report, protocols)
    ours, theirs = rows[0].metrics, rows[1].metrics
    ms_per_explanation = 1000 * rows[0].seconds / len(x)
    explanation = explainer.explain(x)
    explanation.save(out / "explanations" / "test")

    sources = explainer.explain(target.preprocess(train.images))
    pathways = build_class_pathways(sources, train.labels, target.num_classes, target.fingerprint)
    pathways.save(out / "class_pathways")
    transfer = evaluate_transfer(explainer, x, pathways, seed)

    one = x[:1]
    plain_flops = count_flops(explainer.model, one)
    gen_flops = count_flops(explainer.generator, capture_features(explainer.model, target.spec, one).features)

    figures = {
        "heatmaps": plot_class_heatmaps(pathways.frequency, target.classes, target.spec, report / "class_pathways.png"),
        "sparsity": plot_sparsity_histogram({"GEN-CNP": explanation,
                                             **{f"{r.method} ({r.setting})": r.explanation for r in rows
                                                if r.setting == "own operating point"}},
                                            report / "sparsity.png"),
        "transfer": plot_transfer({TRANSFER_LABELS.get(k, k): v for k, v in transfer.items()},
                                  report / "transfer.png"),
    }
    shown = torch.arange(0, len(x), max(1, len(x) // 8))[:8]
    saliency = saliency_map(explainer.pathway_gradient(x[shown], explanation.subset(shown)))
    titles = [f"pred {target.classes[int(c)]}, {100 * float(s):.0f}% sparse"
              for c, s in zip(explanation.classes[shown], explanation.sparsity[shown], strict=True)]
    figures["saliency"] = plot_saliency(test.images[shown], saliency, titles, report / "saliency.png")

    transfer_table = markdown_table(["pathway used", "fidelity %", "mIC", "mDC", "IC rate %", "sparsity %"],
                                    [[TRANSFER_LABELS.get(name, name), f"{r['fidelity']:.1f}", f"{r['mIC']:.2f}",
                                      f"{r['mDC']:.2f}", f"{r['ic_rate']:.1f}", f"{100 * r['sparsity']:.1f}"]
                                     for name, r in transfer.items()])
    markdown = "\n".join([
        "# pathrt demo: GEN-CNP on the embedded digits",
        f"Target: small VGG ({target.spec.total_channels} neurons in {len(target.spec.layers)} pathway layers), "
        f"test accuracy {ours['accuracy']:.2f}%; pathway model accuracy {ours['pathway_accuracy']:.2f}%. "
        f"Generator: {sum(p.numel() for p in generator.parameters()):,} parameters, "
        f"{gen_flops / plain_flops:.1%} of a plain pass in FLOPs "
        f"({gen_flops / 1e6:.1f} vs {plain_flops / 1e6:.1f} MFLOP per image).",
        "## Faithfulness and cost on the test split (SPEC §7)",
        "ms/explanation covers producing the pathway and scoring it (plain + pathway pass); "
        "matched rows keep as many neurons per image as GEN-CNP.",
        table,
        "![fidelity vs sparsity](evaluation.png)",
        "## Instance-specific sparsity",
        "Methods with their own operating point; the matched rows keep exactly GEN-CNP's per-image counts, so "
        "their histogram is GEN-CNP's.",
        "![sparsity](sparsity.png)",
        "## Class pathways (built from the training split, up to 50 correct samples per class)",
        "![class pathways](class_pathways.png)",
        "## Transfer of class pathways to the test split",
        transfer_table,
        "![transfer](transfer.png)",
        "## Pathway-gradient saliency",
        "![saliency](saliency.png)",
        markdown_section(protocols) if protocols is not None else "",
    ])
    md, page = write_report(report, markdown)
    summary = {
        "target": {"reused": target_reused, "test_accuracy": ours["accuracy"], "fingerprint": target.fingerprint},
        "generator": {"reused": generator_reused, "flops_fraction_of_plain_pass": gen_flops / plain_flops},
        "gen_cnp": ours, "random": theirs, "transfer": transfer, "ms_per_explanation": ms_per_explanation,
        "evaluation": evaluation,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "summary.json", summary)
    print(table)
    print(transfer_table)
    print(f"done in {summary['seconds']} s; report: {page} (and {md.name})")
    return summary
