"""Generator training on a tiny model: the loss falls, sparsity rises, resume is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pathrt.data import load_digits
from pathrt.errors import IncompatibleArtifactError, InputError
from pathrt.generator import GeneratorConfig, load_generator
from pathrt.targets import create_target
from pathrt.training import GeneratorTrainingConfig, train_generator

TINY = GeneratorConfig.small(d=32, heads=4, d_r=8, dropout=0.1, head_bias=1.0)


@pytest.fixture(scope="module")
def tiny():
    target = create_target("small_vgg", 10, (3, 32, 32), cfg=(8, "M", 16, "M"), hidden=16)
    train, val = load_digits("train").subset(range(96)), load_digits("test").subset(range(32))
    return target, train, val


def _config(**kw) -> GeneratorTrainingConfig:
    base = dict(steps=30, batch_size=16, lr=3e-2, lambda_sp=1.0, ramp_fraction=0.01, warmup_fraction=0.01,
                val_every=10, checkpoint_every=10, seed=5)
    return GeneratorTrainingConfig(**{**base, **kw})


def test_loss_falls_and_sparsity_rises(tiny) -> None:
    target, train, val = tiny
    log: list[dict[str, float]] = []
    _, history = train_generator(target, train, val, TINY, _config(), progress=False,
                                 callback=lambda step, stats: log.append(stats))
    assert len(log) == 30 and [h["step"] for h in history] == [10, 20, 30]
    first = sum(s["loss"] for s in log[:5]) / 5
    last = sum(s["loss"] for s in log[-5:]) / 5
    assert last < first
    assert log[-1]["sparsity"] > log[0]["sparsity"]


class _Stop(Exception):
    pass


def test_resume_reproduces_an_uninterrupted_run(tiny, tmp_path: Path) -> None:
    target, train, val = tiny
    config = _config(steps=12, checkpoint_every=4, val_every=4)
    whole, whole_history = train_generator(target, train, val, TINY, config, out=tmp_path / "a", progress=False)

    def interrupt(step: int, _stats: dict[str, float]) -> None:
        if step == 6:
            raise _Stop  # killed after the checkpoint at step 4

    with pytest.raises(_Stop):
        train_generator(target, train, val, TINY, config, out=tmp_path / "b", progress=False, callback=interrupt)
    _, meta = load_generator(tmp_path / "b")
    assert meta["info"]["step"] == 4
    resumed, resumed_history = train_generator(target, train, val, TINY, config, out=tmp_path / "b",
                                               resume=True, progress=False)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in whole_history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed_history]
    with pytest.raises(IncompatibleArtifactError, match="another run"):
        train_generator(target, train, val, TINY, _config(steps=12, lr=1e-2), out=tmp_path / "b", resume=True,
                        progress=False)


def test_training_to_a_target_fidelity_adapts_lambda_and_keeps_the_sparsest_meeting_it(tmp_path) -> None:
    """`target_fidelity`: each validation scales λ_sp by exp(gain · (balanced fidelity − target)); the run
    ends with the sparsest validated generator that met the target (also saved as `<stem>`)."""
    import math

    from pathrt.data import TensorImageDataset
    from tests.fuzz.harnesses import tiny_models

    target, generator = tiny_models()
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.rand(32, 1, 8, 8, generator=g), torch.zeros(32, dtype=torch.long),
                              ("a", "b", "c"), "rand")
    config = GeneratorTrainingConfig(steps=12, batch_size=8, val_every=3, checkpoint_every=3, lambda_sp=5.0,
                                     target_fidelity=0.9)
    trained, history = train_generator(target, data, data, generator.config, config, out=tmp_path / "g",
                                       progress=False)
    scale = 1.0
    for entry in history:
        scale = min(1e3, max(1e-3, scale * math.exp(4.0 * (entry["val_balanced_fidelity"] / 100 - 0.9))))
        assert entry["lambda_scale"] == pytest.approx(scale)
        assert 0.0 <= entry["sparsity"] <= 1.0  # hard-mask sparsity
    met = [e for e in history if e["val_balanced_fidelity"] >= 90]
    assert history[-1]["target_fidelity_reached"] == bool(met)
    if met:
        best = max(met, key=lambda e: e["val_sparsity"])
        saved, meta = load_generator(tmp_path / "g")
        assert meta["info"]["chosen_step"] == best["step"]
        assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), trained.state_dict().values(),
                                                     strict=True))
    with pytest.raises(InputError, match="fraction in"):
        GeneratorTrainingConfig(target_fidelity=95)
