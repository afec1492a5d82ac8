"""The README's Python examples run as written, so they cannot rot: the quickstart, and the "Explain
your own model" walkthrough end to end (its module, its wrap_model call, then its commands)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
WALKTHROUGH = (ROOT / "README.md").read_text().split("## Explain your own model", 1)[1].split("\n## ", 1)[0]


def test_readme_quickstart_runs() -> None:
    quickstart = [b for b in BLOCKS if "load_digits" in b]
    assert len(quickstart) == 1, "the README must show the Python API quickstart"
    namespace: dict = {}
    exec(compile(quickstart[0], "README.md", "exec"), namespace)
    assert namespace["explanation"].masks.shape == (len(namespace["test"]), 608)
    assert namespace["saliency"].shape == (4, 3, 32, 32)


def test_readme_own_model_walkthrough_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from pathrt.cli import main

    module, usage = re.findall(r"```python\n(.*?)```", WALKTHROUGH, flags=re.S)
    assert module.startswith("# mymodels.py")
    (tmp_path / "mymodels.py").write_text(module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    import mymodels  # the user's module, as written in the README

    torch.manual_seed(0)
    torch.save(mymodels.small_keras_vgg(10).state_dict(), tmp_path / "my_weights.pth")
    namespace: dict = {}
    exec(compile(usage, "README.md", "exec"), namespace)
    for c, name in enumerate(namespace["target"].classes):  # the user's image folder: 3 images per class
        (tmp_path / "my_images" / name).mkdir(parents=True)
        for i in range(3):
            pixels = torch.randint(0, 256, (40, 48, 3), generator=torch.Generator().manual_seed(10 * c + i))
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(tmp_path / "my_images" / name / f"{i}.png")
    assert namespace["target"].spec.names == ("2", "6")  # the BatchNorms after each ReLU
    commands = re.search(r"```\n(pathrt train .*?)```", WALKTHROUGH, flags=re.S)[1].strip().splitlines()
    for line in commands:
        argv = line.split("#")[0].split()[1:]
        if argv[0] == "train":
            argv += ["--steps", "2", "--val-every", "2", "--checkpoint-every", "2", "--batch-size", "8"]
        assert main([*argv, "--no-progress"] if argv[0] in ("train", "explain") else argv) == 0, line
    assert (tmp_path / "runs" / "export" / "explainer.onnx").is_file()
    assert (tmp_path / "runs" / "bundle" / "model.bundle").is_file()
