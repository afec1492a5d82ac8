"""A user's own model, end to end (issue 15, part 1): one call wraps any nn.Module; the saved target
records the factory that rebuilds it, so every CLI command works with it in a fresh process; what
cannot be rebuilt or imported is a clear input error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pathrt
from pathrt.cli import main as cli_main
from pathrt.errors import InputError
from pathrt.generator import save_generator
from pathrt.runtime import Explanation
from tests.conftest import ROOT, assert_parity, varied_generator
from tests.user_models import KerasStyleNet, TinyNet, random_tiny_net, randomize_batchnorms

CLASSES = ("cat", "dog", "ship", "truck")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras-style user model (conv -> SiLU -> BatchNorm blocks) saved with the class that rebuilds it."""
    folder = tmp_path_factory.mktemp("user-model")
    torch.manual_seed(5)
    model = randomize_batchnorms(KerasStyleNet(4, "silu"), seed=5)
    target = pathrt.wrap_model(model, (3, 32, 32), CLASSES, factory="tests.user_models:KerasStyleNet",
                               factory_kwargs={"classes": 4, "activation": "silu"})
    pathrt.save_target(target, folder / "target")
    save_generator(varied_generator(target.spec), folder / "generator", target.fingerprint)
    return folder


def test_wrapped_model_saves_and_loads_with_its_factory(tmp_path: Path) -> None:
    model = random_tiny_net()
    target = pathrt.wrap_model(model, (3, 32, 32), CLASSES, factory="tests.user_models:tiny_net",
                               factory_kwargs={"classes": 4, "width": 8})
    assert target.arch == "tests.user_models:tiny_net" and target.spec.names == ("body.0.act", "body.2.act")
    pathrt.save_target(target, tmp_path / "target")
    loaded = pathrt.load_target(tmp_path / "target")
    assert loaded.fingerprint == target.fingerprint and loaded.classes == CLASSES
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.model(loaded.preprocess(x)), model(target.preprocess(x)))
    sidecar = json.loads((tmp_path / "target.json").read_text())
    assert sidecar["arch"] == "tests.user_models:tiny_net" and sidecar["arch_kwargs"] == {"classes": 4, "width": 8}


def test_every_cli_command_runs_a_user_target(saved: Path, tmp_path: Path) -> None:
    """A conv -> SiLU -> BatchNorm model from its saved artifacts: explain on every CPU backend (SPEC §8
    parity with eager), export and bundle (each verified against eager by the command)."""
    stems = ["--target", str(saved / "target"), "--generator", str(saved / "generator")]
    results = {}
    for backend in ("eager", "native", "session", "onnx"):
        out = tmp_path / f"explain-{backend}"
        assert cli_main(["explain", *stems, "--backend", backend, "--out", str(out), "--no-progress"]) == 0
        results[backend] = Explanation.load(out / "explanations")
    for backend in ("native", "session", "onnx"):
        assert_parity(results["eager"], results[backend])
    assert cli_main(["export", *stems, "--out", str(tmp_path / "export")]) == 0
    assert cli_main(["bundle", *stems, "--out", str(tmp_path / "m.bundle")]) == 0
    # a fresh process rebuilds the model by importing its factory (here from the repository's tests package)
    run = subprocess.run([sys.executable, "-m", "pathrt.cli", "bundle", *stems, "--out", str(tmp_path / "n.bundle")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0 and "verified" in run.stdout, run.stderr[-2000:]


def test_a_factory_that_cannot_be_imported_is_an_input_error(saved: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    sidecar = json.loads((saved / "target.json").read_text())
    for name in ("target.safetensors", "generator.json", "generator.safetensors"):
        (tmp_path / name).write_bytes((saved / name).read_bytes())
    (tmp_path / "target.json").write_text(json.dumps({**sidecar, "arch": "not_installed.models:net"}))
    with pytest.raises(InputError, match=r"cannot import the model factory 'not_installed.models:net'.*PYTHONPATH"):
        pathrt.load_target(tmp_path / "target")
    code = cli_main(["explain", "--target", str(tmp_path / "target"), "--generator", str(tmp_path / "generator"),
                     "--out", str(tmp_path / "out")])
    assert code == 5 and "install the package that defines it" in capsys.readouterr().err
    (tmp_path / "target.json").write_text(json.dumps({**sidecar, "arch": "tests.user_models:not_a_factory"}))
    with pytest.raises(InputError, match=r"neither an nn.Module class nor a function marked"):
        pathrt.load_target(tmp_path / "target")
    (tmp_path / "target.json").write_text(json.dumps({**sidecar, "arch": "resnet7"}))
    with pytest.raises(InputError, match=r"unknown architecture 'resnet7'.*wrap_model"):
        pathrt.load_target(tmp_path / "target")


def test_factories_are_checked_and_classes_used_when_they_rebuild() -> None:
    model = random_tiny_net()
    assert pathrt.wrap_model(model, (3, 32, 32), CLASSES).arch == "tests.user_models:TinyNet"  # TinyNet() rebuilds it
    with pytest.raises(InputError, match="does not rebuild this model"):
        pathrt.wrap_model(model, (3, 32, 32), CLASSES, factory="tests.user_models:tiny_net",
                          factory_kwargs={"width": 16})
    with pytest.raises(InputError, match=r"neither an nn.Module class"):
        pathrt.wrap_model(model, (3, 32, 32), CLASSES, factory="tests.user_models:not_a_factory")
    wide = TinyNet(classes=4, width=12).eval()  # its class's defaults build another width: in memory only
    target = pathrt.wrap_model(wide, (3, 32, 32), CLASSES)
    assert target.arch == "<TinyNet>"
    with pytest.raises(InputError, match=r"cannot rebuild when loading it.*factory="):
        pathrt.save_target(target, "/nonexistent/never-written")
    with pytest.raises(InputError, match=r"logits of shape \(1, 4\).*3 classes"):
        pathrt.wrap_model(model, (3, 32, 32), CLASSES[:3])


def test_preprocessing_for_raw_pixel_models_and_uint8_images() -> None:
    target = pathrt.wrap_model(random_tiny_net(), (3, 32, 32), CLASSES, scale=255)  # a Keras-style 0..255 model
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(target.preprocess(x), x * 255)
    keras = pathrt.wrap_model(random_tiny_net(), (3, 32, 32), CLASSES, scale=255, mean=(123.7, 116.3, 103.5),
                              std=(58.4, 57.1, 57.4))
    torch.testing.assert_close(keras.preprocess(x)[:, 0], (x[:, 0] * 255 - 123.7) / 58.4)
    pixels = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(keras.preprocess(pixels), keras.preprocess(pixels.float() / 255))
    assert torch.isfinite(pathrt.create_target("small_vgg", 10, (3, 32, 32)).preprocess(pixels)).all()
    with pytest.raises(InputError, match="float images in \\[0, 1\\] or uint8"):
        keras.preprocess(pixels.long())


def test_a_model_defined_in_a_function_is_explainable_in_memory() -> None:
    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    target = pathrt.wrap_model(Local(), (1, 8, 8), 3)
    assert target.arch == "<Local>"
    explanation = pathrt.Explainer(target, varied_generator(target.spec), backend="eager").explain(
        target.preprocess(torch.rand(2, 1, 8, 8)))
    assert len(explanation) == 2


@pytest.mark.parametrize("activation", ["relu", "silu", "gelu", "leaky_relu", "hardswish"])
def test_keras_style_blocks_run_on_every_backend(activation: str) -> None:
    """conv -> activation -> BatchNorm (not foldable into the conv) and the common activations: the
    plan runs them (an affine step, activation steps) in the native runner, the C++ session and the
    ONNX export, each at SPEC §8 parity with eager; the pathway layers are the BatchNorms."""
    torch.manual_seed(1)
    model = randomize_batchnorms(KerasStyleNet(4, activation), seed=1)
    target = pathrt.wrap_model(model, (3, 32, 32), CLASSES)
    assert target.spec.names == ("features.2", "features.7", "features.11")  # where each channel leaves its block
    generator = varied_generator(target.spec)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    eager = pathrt.Explainer(target, generator, backend="eager").explain(x)
    for backend in ("native", "session", "onnx"):
        explainer = pathrt.Explainer(target, generator, backend=backend)
        assert explainer.backend == backend, explainer.backend_reason
        assert_parity(eager, explainer.explain(x))


def test_a_removed_channel_contributes_exactly_zero_downstream() -> None:
    """The mask sits after the block's BatchNorm: removing every channel of layer 1 gives the next
    conv exactly zero input (a mask before the BN would let its shift through), on eager and native."""
    model = randomize_batchnorms(KerasStyleNet(4), seed=3)
    target = pathrt.wrap_model(model, (3, 32, 32), CLASSES)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    masks = [torch.ones(3, c, dtype=torch.bool) for c in target.spec.channels]
    masks[0][:] = False
    seen: list[torch.Tensor] = []
    explainer = pathrt.Explainer(target, varied_generator(target.spec), backend="eager")
    with explainer.using_model() as canonized:
        handle = canonized.features[4].register_forward_hook(lambda _m, args, _o: seen.append(args[0].clone()))
        try:
            pathways = pathrt.targets.pathway_forward(canonized, target.spec, x, masks)
        finally:
            handle.remove()
    assert len(seen) == 1 and torch.count_nonzero(seen[0]) == 0
    native = pathrt.Explainer(target, varied_generator(target.spec), backend="native")
    native_pathways = native.explain_with_masks(x, torch.cat(masks, 1)).pathway_logits
    torch.testing.assert_close(native_pathways, pathways, rtol=1e-4, atol=1e-5)


def test_a_generator_trained_for_other_weights_is_refused_in_memory(saved: Path) -> None:
    """Same layout, other weights: the in-memory Explainer refuses the pairing (as loading from files
    does), unless asked to allow it."""
    from pathrt.errors import IncompatibleArtifactError
    from pathrt.generator import load_generator

    target = pathrt.load_target(saved / "target")
    generator, _ = load_generator(saved / "generator")
    assert generator.target_fingerprint == target.fingerprint
    pathrt.Explainer(target, generator, backend="eager")
    retrained = pathrt.wrap_model(randomize_batchnorms(KerasStyleNet(4, "silu"), seed=9), (3, 32, 32), CLASSES)
    with pytest.raises(IncompatibleArtifactError, match="trained for the target with weights fingerprint"):
        pathrt.Explainer(retrained, generator, backend="eager")
    explainer = pathrt.Explainer(retrained, generator, backend="eager", allow_other_target=True)
    assert len(explainer.explain(torch.randn(2, 3, 32, 32))) == 2


def test_image_folders_are_labelled_by_the_targets_class_names(tmp_path: Path) -> None:
    """Folders named after the target's classes get those labels whatever their sorted order; other
    names follow sorted order with a warning; a count mismatch is an error; the resize method is a choice."""
    from PIL import Image

    from pathrt.data import load_image_folder
    from pathrt.errors import DatasetError

    for folder in ("truck", "cat", "dog", "ship"):
        (tmp_path / "named" / folder).mkdir(parents=True)
        (tmp_path / "other" / f"x_{folder}").mkdir(parents=True)
        for root in ("named", "other"):
            path = tmp_path / root / (folder if root == "named" else f"x_{folder}") / "a.png"
            Image.fromarray((torch.rand(40, 60, 3) * 255).to(torch.uint8).numpy()).save(path)
    named = load_image_folder(tmp_path / "named", classes=CLASSES)
    assert named.classes == CLASSES
    assert {p.parent.name: CLASSES[label] for p, label in named.samples} == {c: c for c in CLASSES}
    with pytest.warns(UserWarning, match="labels follow their sorted order .*x_cat -> cat"):
        other = load_image_folder(tmp_path / "other", classes=CLASSES)
    assert [label for _, label in other.samples] == [0, 1, 2, 3]
    with pytest.raises(DatasetError, match=r"2 classes.*name each folder after its class"):
        load_image_folder(tmp_path / "other", classes=("a", "b"))
    area, bilinear = load_image_folder(tmp_path / "named"), load_image_folder(tmp_path / "named", resize="bilinear")
    assert area[0][0].shape == (3, 32, 32) and not torch.equal(area[0][0], bilinear[0][0])
    with pytest.raises(DatasetError, match="unknown resize method 'cubic'"):
        load_image_folder(tmp_path / "named", resize="cubic")
