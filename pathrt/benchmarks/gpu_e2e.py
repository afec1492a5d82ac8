"""End-to-end parity for `make gpu-check`: `explain` on the native (CUDA) and triton backends against
eager on the CPU, for the embedded model (trained when the demo run is at hand) and random-init
VGG-11 and ResNet-18 at 64×64, under the SPEC §8 rule, with the metrics a user reads off the
explanation (fidelity, mDC, acIOU) compared too.

The GPU references run with TF32 off (cuDNN's TF32 convs err by ~3e-4–1e-3, past the 1e-4 logit
contract, and flip masks near 0.5); one row per model measures the fast backend with TF32 on, as a
speed/accuracy trade, not a verdict.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pathrt.benchmarks.harness import build_models, generator_with_sparsity
from pathrt.benchmarks.paths import BenchModel
from pathrt.errors import InputError
from pathrt.fidelity import fidelity
from pathrt.metrics import aciou, mdc
from pathrt.opspec import parity
from pathrt.runtime import Explainer, Explanation
from pathrt.targets import create_target


@dataclass
class E2ERow:
    model: str
    backend: str
    device: str
    tf32: bool
    images: int
    masks_within_band: int
    masks_outside_band: int
    logits_error: float
    pathway_logits_error: float
    fidelity: float
    fidelity_ref: float
    mdc: float
    mdc_ref: float
    aciou: float | None
    aciou_ref: float | None
    seconds: float
    problem: str

    @property
    def ok(self) -> bool:
        return not self.problem


def tiny_model() -> BenchModel:
    """A 4-class small VGG at 16×16: the model the Triton interpreter can explain in seconds."""
    target = create_target("small_vgg", 4, (3, 16, 16), cfg=(4, "M", 8, 8, "M"), hidden=8)
    generator = generator_with_sparsity(target.spec, 0.5)
    return BenchModel("tiny", Explainer(target, generator, backend="eager"), "random 16x16 small VGG", 8)


def models(workdir: Path, names: tuple[str, ...] = ("embedded", "vgg11", "resnet18", "tiny")) -> list[BenchModel]:
    """Of embedded (trained from `workdir` when present), vgg11@64, resnet18@64 (60% sparsity) and tiny,
    those named."""
    built = build_models([n for n in names if n != "tiny"], workdir, 0.6, 8)
    return [*built, tiny_model()] if "tiny" in names else built


def set_tf32(enabled: bool) -> None:
    """TF32 for cuDNN convs and float32 matmuls on or off (off: the references' precision)."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """`set_tf32(enabled)` for the block (restored after)."""
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    set_tf32(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def _aciou(explanation: Explanation) -> float | None:
    try:
        return aciou(explanation)
    except InputError:  # no class with two explained images (random 1000-class models)
        return None


def compare(model: BenchModel, backend: str, device: str, x: torch.Tensor, want: Explanation,
            tf32_on: bool = False) -> E2ERow:
    """One backend on one device against the CPU eager explanation `want` of the same images."""
    explainer = model.backend(backend, device)
    nan = float("nan")
    if isinstance(explainer, str):
        return E2ERow(model.name, backend, device, tf32_on, len(x), 0, 0, nan, nan, nan, nan, nan, nan, None, None,
                      0.0, f"cannot run: {explainer}")
    start = time.perf_counter()
    with tf32(tf32_on):
        got = explainer.explain(x.to(device))
    seconds = time.perf_counter() - start
    report = parity.compare(got, want)
    problems = [] if tf32_on else report.problems()
    if explainer.backend != backend:
        problems.append(f"ran on {explainer.backend}, not {backend}")
    values = {
        "fidelity": (fidelity(got.logits.cpu(), got.pathway_logits.cpu()), fidelity(want.logits, want.pathway_logits)),
        "mdc": (mdc(got.Y.cpu(), got.O.cpu()), mdc(want.Y, want.O)),
    }
    got_aciou, want_aciou = _aciou(got), _aciou(want)
    if not tf32_on and report.masks_within_band == 0:  # the same masks and predictions give the same metrics
        problems += [f"{name} {a:.4f} != {b:.4f}" for name, (a, b) in values.items() if abs(a - b) > 1e-3]
        if got_aciou is not None and want_aciou is not None and abs(got_aciou - want_aciou) > 1e-3:
            problems.append(f"acIOU {got_aciou:.4f} != {want_aciou:.4f}")
    return E2ERow(model.name, backend, device, tf32_on, len(x), report.masks_within_band, report.masks_outside_band,
                  report.rel_errors["logits"], report.rel_errors["pathway_logits"], values["fidelity"][0],
                  values["fidelity"][1], values["mdc"][0], values["mdc"][1], got_aciou, want_aciou, seconds,
                  "; ".join(problems))


def rows_for(model: BenchModel, device: str, backends: tuple[str, ...], batch: int) -> list[E2ERow]:
    """Every backend of `backends` on `device` (plus eager, and TF32 on, when that is CUDA) for `model`."""
    x = model.inputs(batch)
    want = model.explainer.explain(x)
    rows = [compare(model, name, device, x, want) for name in backends]
    if device == "cuda":
        rows.append(compare(model, "eager", device, x, want))
        rows.append(compare(model, backends[0], device, x, want, tf32_on=True))
    return rows


def as_dicts(rows: list[E2ERow]) -> list[dict[str, Any]]:
    return [{**asdict(r), "ok": r.ok} for r in rows]
