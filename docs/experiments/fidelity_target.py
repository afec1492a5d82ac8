"""Issue 15's fidelity runs: balanced fidelity with and without a target fidelity, on the embedded
digits and on a skewed setting (class 0 whole, other classes 11%). Run: `.venv/bin/python
docs/experiments/fidelity_target.py [--skewed]` (about 10 minutes each on 2 cores)."""

from __future__ import annotations

import json
import sys
import time

import torch

from pathrt import (
    Explainer,
    GeneratorTrainingConfig,
    TargetTrainingConfig,
    load_digits,
    metrics,
    train_generator,
    train_target,
)


def skewed(data, keep_other: float, seed: int):
    """Every image of class 0 and a random `keep_other` share of the others."""
    keep = (data.labels == 0) | (torch.rand(len(data), generator=torch.Generator().manual_seed(seed)) < keep_other)
    return data.subset(torch.nonzero(keep).flatten().numpy(), f"{data.name}-skewed")


def main() -> None:
    train, test = load_digits("train"), load_digits("test")
    name = "embedded"
    if "--skewed" in sys.argv:
        train, test, name = skewed(train, 0.11, 1), skewed(test, 0.11, 2), "skewed"
    target = train_target(train, test, TargetTrainingConfig(), progress=False)
    for target_fidelity in (None, 0.95):
        start = time.time()
        generator, history = train_generator(target, train, test, progress=False,
                                             config=GeneratorTrainingConfig(target_fidelity=target_fidelity))
        summary = metrics.summarize(Explainer(target, generator).explain(target.preprocess(test.images)))
        chosen = max((h for h in history if h.get("best")), key=lambda h: h["val_sparsity"], default={})
        print(json.dumps({"setting": name, "target_fidelity": target_fidelity, "fidelity": summary["fidelity"],
                          "balanced_fidelity": summary["balanced_fidelity"],
                          "sparsity": 100 * summary["sparsity"]["mean"], "warning": summary["warning"],
                          "chosen_step": chosen.get("step"),
                          "lambda_scales": [h.get("lambda_scale", 1.0) for h in history],
                          "seconds": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
