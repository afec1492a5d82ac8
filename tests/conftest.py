"""Shared test fixtures: seeded RNGs, small real torchvision targets, a trained embedded target."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pathrt  # noqa: F401  (registers torch.ops.pathrt)

ROOT = Path(__file__).resolve().parents[1]
# A trained embedded target's stem that a pytest run hands to the pytest it starts (`make sanitize`), so
# the nested run copies it instead of training its own (~30 s, more under the sanitizers).
TRAINED_TARGET_ENV = "PATHRT_TEST_TRAINED_TARGET"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu`-marked tests skip, saying why, where torch sees no CUDA device (they run in
    `make gpu-check` on the GPU machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here); runs in `make gpu-check` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Every test starts on the process's own torch thread count: a test that changes it (an actor built
    in-process sets its own) once left every later test of the run on one thread."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def randomize_batchnorms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Gives every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.3 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return model


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (for import-time behaviour) and returns the result."""
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=ROOT)


def assert_python_ok(code: str, env: dict[str, str] | None = None) -> None:
    """Runs `code` in a fresh interpreter; it must exit 0 and print "ok" as its last line."""
    result = run_python(code + "\nprint('ok')\n", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ok", result.stdout


def run_in_threads(calls: list, rounds: int = 3, timeout: float = 600) -> list[list]:
    """Runs each of `calls` `rounds` times in its own thread, all started together; returns each call's
    results (and fails on any exception or a thread still running after `timeout` seconds)."""
    import threading

    results: list[list] = [[] for _ in calls]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def work(t: int) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                results[t].append(calls[t]())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    return results


@pytest.fixture(scope="session")
def trained_target_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default target trained with the default config once per session (~30 s), or a copy
    of the one that the parent run names in TRAINED_TARGET_ENV (training is seeded: the same target)."""
    from pathrt.artifacts import artifact_paths
    from pathrt.data import load_digits
    from pathrt.targets.training import train_target

    stem = tmp_path_factory.mktemp("target") / "target"
    given = os.environ.get(TRAINED_TARGET_ENV)
    if given:
        for src, dst in zip(artifact_paths(given), artifact_paths(stem), strict=True):
            shutil.copyfile(src, dst)  # a copy: no nested test can change the parent's files
        return stem
    train_target(load_digits("train"), load_digits("test"), out=stem, progress=False)
    return stem


@pytest.fixture(scope="session")
def embedded(trained_target_path: Path):
    """The trained embedded target (small VGG on the digits)."""
    from pathrt.targets import load_target

    return load_target(trained_target_path)


def torchvision_target(arch: str):
    """A torchvision architecture at 64x64 with random weights and non-trivial BatchNorm statistics."""
    from pathrt.targets import create_target

    target = create_target(arch, 10, (3, 64, 64))
    randomize_batchnorms(target.model)
    return target


def tiny_evaluation(images: int, sources: int):
    """A 3-class small VGG with an untrained generator, random images and sources labelled with the
    model's own predictions (so every class has correct transfer sources): (explainer, images, labels,
    sources, source labels), the inputs of `pathrt.evaluate.evaluate`."""
    from pathrt.generator import GeneratorConfig, PathwayGenerator
    from pathrt.runtime import Explainer
    from pathrt.targets import create_target

    target = create_target("small_vgg", 3, (3, 32, 32), cfg=(8, "M", 16, "M"), hidden=16)
    explainer = Explainer(target, PathwayGenerator(target.spec, GeneratorConfig.small(d=32, heads=4, d_r=8,
                                                                                        head_bias=0.0)))
    g = torch.Generator().manual_seed(0)
    x, src = torch.randn(images, 3, 32, 32, generator=g), torch.randn(sources, 3, 32, 32, generator=g)
    with torch.no_grad():
        return explainer, x, target.model(x).argmax(1), src, target.model(src).argmax(1)


def varied_generator(spec, seed: int = 0, sparsity_bias: float = 0.0):
    """A random generator whose masks differ from sample to sample (about half the neurons kept)."""
    from pathrt.generator import GeneratorConfig, PathwayGenerator

    torch.manual_seed(seed)
    generator = PathwayGenerator(spec, GeneratorConfig.small(head_bias=0.0)).eval()
    with torch.no_grad():
        for head in generator.rpd.heads:
            head[-1].weight.mul_(20.0)
            head[-1].bias.normal_(sparsity_bias, 1.0)
    return generator


def assert_masks_match(masks: torch.Tensor, expected: torch.Tensor, scores: torch.Tensor) -> None:
    """Equal except where the reference score lies within the SPEC §8 band of the threshold."""
    from pathrt.opspec import parity

    report = parity.compare({"masks": masks}, {"masks": expected, "scores": scores}, ())
    assert report.ok, report.describe()


def assert_parity(eager, fast) -> None:
    """SPEC §8 (`pathrt.opspec.parity`), plus scores within 1e-5 and equal packing and classes."""
    from pathrt.opspec import parity

    report = parity.compare(fast, eager)
    assert report.ok, report.describe()
    torch.testing.assert_close(fast.scores, eager.scores, rtol=0, atol=1e-5)
    if torch.equal(eager.masks, fast.masks):
        assert torch.equal(eager.packed, fast.packed) and torch.equal(eager.classes, fast.classes)
