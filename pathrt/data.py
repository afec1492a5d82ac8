"""Data sets: the embedded default (scikit-learn's digits, offline) and user data.

Every loader returns images as float32 in [0, 1], shape (N, 3, H, W), with int64 labels and the
class names; normalization belongs to the target (`Target.preprocess`).

  * `load_digits()`: the 1,797 real 8x8 handwritten digits that ship inside scikit-learn,
    upscaled (bilinear) to 32x32 and repeated to 3 channels, with a fixed stratified split
    (20% test per class, seed 0). Needs no network.
  * `load_image_folder(root)`: torchvision's ImageFolder layout (root/<class>/<image>), loaded lazily.
  * `load_cifar10(root, split)`: CIFAR-10's standard python format from a local folder, read with a
    restricted unpickler that only rebuilds numpy arrays, lists, dicts and strings (no code runs).
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pathrt.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DIGITS_SIZE = 32
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass
class TensorImageDataset(Dataset):
    """An in-memory labelled image set: images (N, 3, H, W) in [0, 1], labels (N,), class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std over all pixels (for the target's normalization)."""
        mean = self.images.mean(dim=(0, 2, 3))
        std = self.images.std(dim=(0, 2, 3)).clamp_min(1e-6)
        return tuple(mean.tolist()), tuple(std.tolist())

    def subset(self, indices: torch.Tensor | Sequence[int], name: str | None = None) -> TensorImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorImageDataset(self.images[idx], self.labels[idx], self.classes, name or self.name)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with `test_fraction` of every class in the test part (stable: legacy RNG)."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(split: str = "train", size: int = DIGITS_SIZE) -> TensorImageDataset:
    """The embedded default: scikit-learn's digits at `size` x `size`, split "train", "test" or "all"."""
    from sklearn.datasets import load_digits as sklearn_digits

    if split not in ("train", "test", "all"):
        raise DatasetError(f"split must be 'train', 'test' or 'all', got {split!r}")
    bunch = sklearn_digits()
    raw = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    images = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    full = TensorImageDataset(images, labels, tuple(str(d) for d in range(10)), "digits")
    if split == "all":
        return full
    train_idx, test_idx = stratified_split(bunch.target, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return full.subset(train_idx if split == "train" else test_idx, f"digits-{split}")


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------


# How image-folder images are resized to the target's input (PIL filters). "area" (the default) averages
# the source pixels each output pixel covers: no aliasing when shrinking photos to a small input.
RESIZE_METHODS = ("area", "bilinear", "bicubic", "lanczos", "nearest")


def _read_image(path: Path | io.BytesIO, size: tuple[int, int], resize: str = "area", name: str = "") -> torch.Tensor:
    """One image (a file, or encoded bytes named `name` in messages) as (3, H, W) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    filters = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
               "nearest": Image.Resampling.NEAREST}
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size[1], size[0]), filters[resize])
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{name or path} is not a readable image ({exc}); remove or replace it") from exc
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageFolderDataset(Dataset):
    """Images under root/<class>/..., sorted, resized to `size` on load (lazily, with `resize`, one of
    RESIZE_METHODS). With `classes` (a target's class names), folders named after them get those
    labels; folders named otherwise take the classes in sorted order, with a warning that says so."""

    def __init__(self, root: str | os.PathLike[str], size: tuple[int, int] = (32, 32), *,
                 classes: Sequence[str] | None = None, resize: str = "area") -> None:
        if resize not in RESIZE_METHODS:
            raise DatasetError(f"unknown resize method {resize!r}; choose one of {', '.join(RESIZE_METHODS)}")
        self.root = Path(root)
        self.size = size
        self.resize = resize
        if not self.root.exists():
            raise DatasetError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root} is a file; give a folder laid out as <root>/<class>/<image>")
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            loose = [p.name for p in self.root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:3]
            hint = f" (found loose images {loose}: put them in one subfolder per class)" if loose else ""
            raise DatasetError(f"{self.root} has no class subfolders; expected <root>/<class>/<image>{hint}")
        labels = self._labels([p.name for p in class_dirs], classes)
        self.samples: list[tuple[Path, int]] = []
        rejected: list[str] = []
        for label, class_dir in zip(labels, class_dirs, strict=True):
            for path in sorted(class_dir.rglob("*")):
                if path.is_dir() or path.name.startswith("."):
                    continue
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    self.samples.append((path, label))
                else:
                    rejected.append(str(path.relative_to(self.root)))
        if rejected:
            raise DatasetError(f"{self.root} holds {len(rejected)} non-image files, e.g. {rejected[:5]}; "
                               f"image files end in {', '.join(IMAGE_EXTENSIONS)}")
        if not self.samples:
            raise DatasetError(f"{self.root} has class folders {list(self.classes)[:5]} but no images in them")
        counts = np.bincount([lbl for _, lbl in self.samples], minlength=len(self.classes))
        if (counts[labels] == 0).any():
            missing = [d.name for d, lbl in zip(class_dirs, labels, strict=True) if counts[lbl] == 0]
            raise DatasetError(f"class folders {missing[:5]} in {self.root} hold no images")

    def _labels(self, folders: list[str], classes: Sequence[str] | None) -> list[int]:
        """The label of each class folder (sorted), and `self.classes`, as the class docstring says."""
        if classes is None:
            self.classes = tuple(folders)
            return list(range(len(folders)))
        self.classes = tuple(classes)
        unknown = [f for f in folders if f not in self.classes]
        if not unknown:
            return [self.classes.index(f) for f in folders]
        if len(folders) != len(self.classes):
            raise DatasetError(f"{self.root} has {len(folders)} class folders but the target has {len(self.classes)} "
                               f"classes, and folders {unknown[:3]} are not named after any of them "
                               f"({list(self.classes)[:5]}...): name each folder after its class")
        pairs = ", ".join(f"{f} -> {c}" for f, c in list(zip(folders, self.classes, strict=True))[:4])
        warnings.warn(f"the folders of {self.root} are not named after the target's classes ({unknown[:3]} are not "
                      f"among them): labels follow their sorted order ({pairs}, ...); rename the folders after the "
                      "classes to map them by name", stacklevel=3)
        return list(range(len(folders)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return _read_image(path, self.size, self.resize), label

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, *self.size)

    def materialize(self) -> TensorImageDataset:
        """Loads every image into memory."""
        images = torch.stack([self[i][0] for i in range(len(self))])
        labels = torch.tensor([lbl for _, lbl in self.samples], dtype=torch.long)
        return TensorImageDataset(images, labels, self.classes, self.root.name)


def list_image_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every image file under `root` (recursively, sorted; hidden files ignored); DatasetError for a
    missing or empty folder or one holding non-image files."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"image folder {base} does not exist or is not a folder")
    files = sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
    rejected = [str(p.relative_to(base)) for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if rejected:
        raise DatasetError(f"{base} holds {len(rejected)} non-image files, e.g. {rejected[:5]}; "
                           f"image files end in {', '.join(IMAGE_EXTENSIONS)}")
    if not files:
        raise DatasetError(f"{base} holds no images")
    return files


def read_images(paths: Sequence[Path], size: int | tuple[int, int] = 32) -> torch.Tensor:
    """The images at `paths` resized to `size`: (N, 3, H, W) in [0, 1]."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return torch.stack([_read_image(p, hw) for p in paths])  # type: ignore[arg-type]


def decode_images(encoded: Sequence[bytes], names: Sequence[str], size: int | tuple[int, int] = 32) -> torch.Tensor:
    """Encoded images (PNG, JPEG, ... bytes, e.g. a Parquet column) resized to `size`: (N, 3, H, W) in
    [0, 1]; DatasetError naming the first that does not decode."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return torch.stack([_read_image(io.BytesIO(b), hw, name=n)  # type: ignore[arg-type]
                        for b, n in zip(encoded, names, strict=True)])


def load_image_files(root: str | os.PathLike[str], size: int | tuple[int, int] = 32) -> tuple[torch.Tensor, list[Path]]:
    """Every image under `root` (see `list_image_files`), resized to `size`: (N, 3, H, W) in [0, 1] and the paths."""
    files = list_image_files(root)
    return read_images(files, size), files


def load_image_folder(root: str | os.PathLike[str], size: int | tuple[int, int] = 32, *,
                      classes: Sequence[str] | None = None, resize: str = "area") -> ImageFolderDataset:
    """A user's image folder in torchvision's ImageFolder layout, resized to `size` with `resize`
    ("area" by default: antialiased when shrinking; see RESIZE_METHODS); with `classes` (e.g.
    `target.classes`) folders are labelled by class name (see ImageFolderDataset)."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    return ImageFolderDataset(root, shape, classes=classes, resize=resize)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (python format), without executing pickled code
# ---------------------------------------------------------------------------------------------

_CIFAR_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays and plain containers; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CIFAR_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _read_cifar_batch(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; CIFAR-10 python format has data_batch_1..5, test_batch "
                           "and batches.meta")
    try:
        data = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path} is not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path} does not hold a CIFAR batch dictionary")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def load_cifar10(root: str | os.PathLike[str], split: str = "train") -> TensorImageDataset:
    """CIFAR-10 from a local folder (the `cifar-10-batches-py` folder or its parent)."""
    base = Path(root)
    if not base.exists():
        raise DatasetError(f"CIFAR-10 folder {base} does not exist")
    if (base / "cifar-10-batches-py").is_dir():
        base = base / "cifar-10-batches-py"
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    arrays, labels = [], []
    for name in names:
        batch = _read_cifar_batch(base / name)
        data = np.asarray(batch.get("data"))
        lab = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise DatasetError(f"{base / name}: expected uint8 data (N, 3072) and N labels, got "
                               f"{data.dtype} {data.shape} and {lab.shape}")
        arrays.append(data)
        labels.append(lab)
    meta = _read_cifar_batch(base / "batches.meta")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", []))
    images = torch.from_numpy(np.concatenate(arrays).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    label_tensor = torch.from_numpy(np.concatenate(labels))
    if len(classes) <= int(label_tensor.max()):
        raise DatasetError(f"{base / 'batches.meta'} names {len(classes)} classes but labels reach "
                           f"{int(label_tensor.max())}")
    return TensorImageDataset(images, label_tensor, classes, f"cifar10-{split}")
