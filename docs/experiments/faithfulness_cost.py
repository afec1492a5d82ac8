"""What the Faithfulness protocols cost on the demo's model, and mean against zero ablation.

    make demo && .venv/bin/python docs/experiments/faithfulness_cost.py

Prints the median time of `explain_with_masks` over the 359 test digits with GEN-CNP's masks under
zero and mean ablation (backend auto), and the time of `run_faithfulness` without DGR's order.
Run it on a quiet machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pathrt.data import load_digits
from pathrt.evaluate import evaluate, run_faithfulness
from pathrt.runtime import Explainer


def median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[repeats // 2]


def main() -> None:
    explainer = Explainer.from_files("runs/demo/target", "runs/demo/generator")
    test, train = load_digits("test"), load_digits("train")
    x, train_x = explainer.target.preprocess(test.images), explainer.target.preprocess(train.images)
    reference = explainer.explain(x)
    fill = explainer.target.channel_means
    zero = median_ms(lambda: explainer.explain_with_masks(x, reference.masks, reference.classes))
    mean = median_ms(lambda: explainer.explain_with_masks(x, reference.masks, reference.classes, fill=fill))
    print(f"backend {explainer.backend}; explain_with_masks of {len(x)} digits: zero ablation {zero:.1f} ms, "
          f"mean ablation {mean:.1f} ms ({mean / zero:.2f}x)")
    rows = evaluate(explainer, x, test.labels, train_x, train.labels, include_dgr=False, log=lambda _: None)
    start = time.perf_counter()
    run_faithfulness(explainer, x, rows, train_x, log=lambda _: None)
    print(f"faithfulness protocols (no DGR order): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
