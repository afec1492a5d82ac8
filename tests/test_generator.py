"""GEN-CNP generator: DAQ, shapes and initial pathway, cost budget, checkpoint artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pathrt.errors import IncompatibleArtifactError
from pathrt.flops import count_flops
from pathrt.generator import DAQ, GeneratorConfig, PathwayGenerator, load_generator, save_generator
from pathrt.targets import create_target


def test_daq_training_output_is_exactly_the_rounded_score_with_gradients() -> None:
    scores = torch.tensor([0.0, 0.1, 0.49, 0.5, 0.51, 0.8, 1.0, 0.3], requires_grad=True)
    daq = DAQ(sigma=2.0, temperature=2.0).train()
    masks = daq(scores)
    assert torch.equal(masks, (scores >= 0.5).float())  # round(s), ties up, as the inference rule
    torch.testing.assert_close(daq.soft(scores), masks, atol=1e-5, rtol=0)  # m̃ ≈ the level algebraically
    (masks * torch.arange(1.0, 9.0)).sum().backward()
    assert scores.grad is not None and torch.all(scores.grad[1:-1] != 0)


def test_daq_inference_mask_is_threshold() -> None:
    scores = torch.rand(64, 37)
    assert torch.equal(DAQ().eval()(scores), (scores >= 0.5).float())


@pytest.mark.parametrize(("arch", "size"), [("small_vgg", 32), ("resnet18", 64), ("alexnet", 64)])
def test_generator_shapes_and_initial_full_pathway(arch: str, size: int) -> None:
    target = create_target(arch, 10, (3, size, size))
    generator = PathwayGenerator(target.spec, GeneratorConfig.small())
    features = target.capture(torch.randn(3, 3, size, size)).features
    generator.train()
    out = generator(features)
    assert [tuple(s.shape) for s in out.scores] == [(3, c) for c in target.spec.channels]
    assert all(m.dtype == torch.float32 and set(m.unique().tolist()) <= {0.0, 1.0} for m in out.masks)
    generator.eval()
    out = generator(features)
    assert all(m.dtype == torch.bool for m in out.masks)
    scores = torch.cat(out.scores, 1)
    assert scores.mean() > 0.9 and torch.cat(out.masks, 1).all()  # head bias +3: the whole network at first
    assert torch.equal(torch.cat(out.masks, 1), scores >= 0.5)


def test_small_generator_meets_the_cost_budget() -> None:
    target = create_target("small_vgg", 10, (3, 32, 32))
    x = torch.randn(1, 3, 32, 32)
    generator = PathwayGenerator(target.spec, GeneratorConfig.small()).eval()
    plain = count_flops(target.model, x)
    cost = count_flops(generator, target.capture(x).features)
    assert 0 < cost <= 0.25 * plain  # SPEC §3: at most 25% of one plain pass


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    target = create_target("small_vgg", 10, (3, 32, 32))
    generator = PathwayGenerator(target.spec, GeneratorConfig.small(d=64, heads=4)).eval()
    save_generator(generator, tmp_path / "g", target.fingerprint, {"note": 1})
    loaded, meta = load_generator(tmp_path / "g", target_fingerprint=target.fingerprint, spec=target.spec)
    assert loaded.config == generator.config and meta["info"] == {"note": 1}
    features = target.capture(torch.randn(2, 3, 32, 32)).features
    torch.testing.assert_close(torch.cat(loaded(features).scores, 1), torch.cat(generator(features).scores, 1))
    with pytest.raises(IncompatibleArtifactError, match="trained for the target"):
        load_generator(tmp_path / "g", target_fingerprint="f" * 64)
    other = create_target("small_vgg", 10, (3, 32, 32), cfg=(16, "M", 32))
    with pytest.raises(IncompatibleArtifactError, match="pathway spec"):
        load_generator(tmp_path / "g", spec=other.spec)
