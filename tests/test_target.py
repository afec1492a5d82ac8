"""The target artifact: save/load round trip, fingerprints, refusals, local torchvision weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pathrt.artifacts import artifact_paths, load_tensors
from pathrt.errors import ArtifactError, IncompatibleArtifactError
from pathrt.targets import create_target, import_weights, load_target, save_target
from tests.conftest import assert_python_ok


@pytest.fixture
def saved(tmp_path: Path):
    target = create_target("small_vgg", ["a", "b", "c"], (3, 32, 32), mean=(0.1, 0.2, 0.3), std=(1, 2, 3))
    target.info = {"note": "test"}
    save_target(target, tmp_path / "t")
    return target, tmp_path / "t"


@torch.no_grad()
def test_round_trip(saved) -> None:
    target, stem = saved
    loaded = load_target(stem)
    assert loaded.fingerprint == target.fingerprint and loaded.classes == ("a", "b", "c")
    assert loaded.spec == target.spec and loaded.mean == (0.1, 0.2, 0.3) and loaded.info == {"note": "test"}
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.model(loaded.preprocess(x)), target.model(target.preprocess(x)))
    assert sorted(p.name for p in stem.parent.iterdir()) == ["t.json", "t.safetensors"]  # no temp files left
    assert load_target(str(stem) + ".safetensors").fingerprint == target.fingerprint


def test_refuses_tampered_weights(saved) -> None:
    _, stem = saved
    weights, _ = artifact_paths(stem)
    tensors = load_tensors(weights)
    tensors["classifier.3.bias"] = tensors["classifier.3.bias"] + 1
    save_file(tensors, str(weights))
    with pytest.raises(IncompatibleArtifactError, match="different saves"):
        load_target(stem)


def test_refuses_other_architecture_and_fingerprint(saved) -> None:
    _, stem = saved
    with pytest.raises(IncompatibleArtifactError, match="not 'vgg11'"):
        load_target(stem, arch="vgg11")
    with pytest.raises(IncompatibleArtifactError, match="another model"):
        load_target(stem, fingerprint="0" * 64)


def test_corrupted_files(saved) -> None:
    _, stem = saved
    weights, sidecar = artifact_paths(stem)
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version 99"):
        load_target(stem)
    sidecar.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_target(stem)
    sidecar.write_text(json.dumps(meta))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load_target(stem)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_target(stem.parent / "missing")


def test_import_local_torchvision_weights(tmp_path: Path) -> None:
    source = create_target("resnet18", 10, (3, 32, 32))
    torch.save(source.model.state_dict(), tmp_path / "resnet18.pth")
    imported = import_weights("resnet18", tmp_path / "resnet18.pth", 10, (3, 32, 32))
    assert imported.fingerprint == source.fingerprint
    save_target(imported, tmp_path / "r18")
    assert load_target(tmp_path / "r18", arch="resnet18").fingerprint == source.fingerprint
    with pytest.raises(IncompatibleArtifactError, match="wrong shapes"):
        import_weights("resnet18", tmp_path / "resnet18.pth", 5, (3, 32, 32))
    with pytest.raises(IncompatibleArtifactError, match="missing"):
        import_weights("resnet34", tmp_path / "resnet18.pth", 10, (3, 32, 32))
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")
    with pytest.raises(ArtifactError, match="weights_only"):
        import_weights("resnet18", tmp_path / "pickled.pth", 10, (3, 32, 32))


def test_torchvision_is_imported_only_for_its_models(saved) -> None:
    """pathrt imports torchvision (1.2 s: its ops import torch._dynamo) only to build one of its models:
    a small VGG target loads and explains without it; a ResNet still gets its residual-block pathway."""
    _, stem = saved
    assert_python_ok(
        "import sys, torch\n"
        "from pathrt.runtime import Explainer\n"
        "from pathrt.targets import create_target, load_target\n"
        "from pathrt.generator import GeneratorConfig, PathwayGenerator\n"
        f"target = load_target({str(stem)!r})\n"
        "generator = PathwayGenerator(target.spec, GeneratorConfig.small()).eval()\n"
        "Explainer(target, generator).explain(torch.rand(1, 3, 32, 32))\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "resnet = create_target('resnet18', 10, (3, 64, 64))\n"
        "assert 'torchvision' in sys.modules and resnet.spec.rule == 'residual-block', resnet.spec.rule\n"
    )
