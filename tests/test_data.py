"""Data: the embedded digits, user image folders, CIFAR-10 python format (without pickled code)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pathrt.data import load_cifar10, load_digits, load_image_folder
from pathrt.errors import DatasetError


def test_digits_split_is_fixed_and_stratified() -> None:
    train, test, full = load_digits("train"), load_digits("test"), load_digits("all")
    assert len(full) == 1797 and len(train) + len(test) == 1797
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.float32
    assert float(full.images.min()) >= 0.0 and float(full.images.max()) <= 1.0
    counts = torch.bincount(test.labels, minlength=10).float()
    assert torch.all((counts / torch.bincount(full.labels, minlength=10).float() - 0.2).abs() < 0.02)
    again = load_digits("test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    with pytest.raises(DatasetError, match="split"):
        load_digits("validation")


def _write_folder(root: Path) -> None:
    for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20 + i, 10), color).save(root / c / f"{i}.png")


def test_image_folder(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"x")  # hidden files are ignored
    data = load_image_folder(tmp_path, size=16)
    assert data.classes == ("cat", "dog") and len(data) == 6
    image, label = data[4]
    assert image.shape == (3, 16, 16) and label == 1
    torch.testing.assert_close(image[:, 5, 5], torch.tensor([0.0, 0.0, 1.0]))
    full = data.materialize()
    assert full.images.shape == (6, 3, 16, 16) and full.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_image_folder(tmp_path / "empty")
    bad = tmp_path / "bad"
    _write_folder(bad)
    (bad / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"non-image files.*notes.txt"):
        load_image_folder(bad)
    (bad / "dog" / "notes.txt").unlink()
    (bad / "dog" / "broken.png").write_bytes(b"garbage")
    data = load_image_folder(bad)
    with pytest.raises(DatasetError, match=r"broken\.png"):
        data.materialize()


def _cifar_batch(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 3, n))}
    batch[b"labels"] = [int(v) for v in batch[b"labels"]]
    path.write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_python_format(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _cifar_batch(root / f"data_batch_{i}", 4, i)
    _cifar_batch(root / "test_batch", 5, 9)
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"plane", b"car", b"bird"]}, protocol=2))
    train, test = load_cifar10(tmp_path, "train"), load_cifar10(root, "test")
    assert len(train) == 20 and len(test) == 5 and train.classes == ("plane", "car", "bird")
    raw = pickle.loads((root / "test_batch").read_bytes())[b"data"]
    torch.testing.assert_close(test.images[0], torch.from_numpy(raw[0].reshape(3, 32, 32) / 255.0).float())


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/pathrt-pwned",))


def test_cifar10_refuses_pickled_code(tmp_path: Path) -> None:
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(DatasetError, match="refusing to load"):
        load_cifar10(tmp_path, "train")
    assert not Path("/tmp/pathrt-pwned").exists()
    with pytest.raises(DatasetError, match="does not exist"):
        load_cifar10(tmp_path / "missing")
