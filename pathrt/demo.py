"""`pathrt demo` (what `make demo` runs) on the embedded default data set.

What the foundation can show today: train (or reuse) the small VGG target on the digits, check
that canonization keeps its function, list its pathway layers, check the pathway forward (all-ones
masks reproduce the plain pass exactly; random channel masks at several sparsities degrade
fidelity) and measure the acIOU of random pathways through the packed-mask ops. The GEN-CNP
generator, its metrics and the report join with the generator issue.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pathrt.artifacts import artifact_paths, write_json
from pathrt.data import TensorImageDataset, load_digits
from pathrt.errors import ArtifactError
from pathrt.runtime.ops import pack_masks, pairwise_iou
from pathrt.targets import Target, canonized, load_target
from pathrt.targets.training import TargetTrainingConfig, evaluate_accuracy, train_target


def get_demo_target(workdir: Path, train: TensorImageDataset, test: TensorImageDataset, retrain: bool = False,
                    progress: bool = True) -> tuple[Target, bool]:
    """The cached demo target in `workdir`, or one freshly trained on `train`; (target, reused)."""
    stem = workdir / "target"
    if not retrain and artifact_paths(stem)[1].exists():
        try:
            return load_target(stem, arch="small_vgg"), True
        except ArtifactError as exc:
            print(f"cached target unusable ({exc}); training again")
    else:
        print(f"training the target (cached at {artifact_paths(stem)[0]} afterwards)")
    target = train_target(train, test, TargetTrainingConfig(), out=stem, progress=progress)
    return target, False


def run_demo(workdir: str | Path = "runs/demo", retrain: bool = False, progress: bool = True,
             seed: int = 0) -> dict[str, Any]:
    """Runs the demo, prints what it finds and writes `workdir/summary.json`; returns the summary."""
    start = time.perf_counter()
    out = Path(workdir)
    train, test = load_digits("train"), load_digits("test")
    print(f"data: scikit-learn digits at 32x32, {len(train)} train / {len(test)} test images")
    target, reused = get_demo_target(out, train, test, retrain, progress)
    with torch.no_grad():
        summary = _inspect(target, test, seed)
    summary["target"]["reused"] = reused
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "summary.json", summary)
    print(f"done in {summary['seconds']} s; summary: {out / 'summary.json'}")
    return summary


def _inspect(target: Target, test: TensorImageDataset, seed: int) -> dict[str, Any]:
    accuracy = evaluate_accuracy(target, test)
    print(f"target: {target.arch}, test accuracy {100 * accuracy:.2f}%")

    x = target.preprocess(test.images)
    plain = target.model(x)
    with canonized(target.model) as folding:
        folded = folding.folded
        canon = target.model(x)
        print(f"canonization: folded {folded} BatchNorms, max relative logit error "
              f"{float((canon - plain).abs().max() / plain.abs().max()):.2e}")
        print(f"pathway layers (SPEC §1, {target.spec.rule} rule):")
        print(target.spec.describe())
        capture = target.capture(x)
        ones = torch.ones(x.shape[0], target.spec.total_channels, dtype=torch.bool)
        exact = torch.equal(target.pathway_logits(x, ones), capture.logits)
        print(f"pathway forward with all-ones masks equals the plain forward exactly: {exact}")
        generator = torch.Generator().manual_seed(seed)
        predicted = capture.logits.argmax(1)
        rows = []
        for sparsity in (0.1, 0.3, 0.5, 0.7, 0.9):
            masks = torch.rand(x.shape[0], target.spec.total_channels, generator=generator) >= sparsity
            fidelity = float((target.pathway_logits(x, masks).argmax(1) == predicted).float().mean())
            packed = pack_masks(masks)
            iou = pairwise_iou(packed, packed)
            off_diag = iou[~torch.eye(len(iou), dtype=torch.bool)]
            rows.append({"sparsity": sparsity, "fidelity": fidelity, "mean_pairwise_iou": float(off_diag.mean())})
    print("random pathways (a baseline the generator must beat):")
    print(f"  {'sparsity':>8}  {'fidelity':>8}  {'mean IoU':>8}")
    for row in rows:
        print(f"  {row['sparsity']:>8.0%}  {row['fidelity']:>8.1%}  {row['mean_pairwise_iou']:>8.3f}")
    return {
        "target": {"arch": target.arch, "test_accuracy": accuracy,
                   "fingerprint": target.fingerprint, "training": target.info},
        "pathway_spec": target.spec.to_dict(),
        "canonized_batchnorms": folded,
        "all_ones_equals_plain": exact,
        "random_pathways": rows,
    }
