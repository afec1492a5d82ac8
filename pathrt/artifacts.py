"""Reading and writing pathrt artifacts: safetensors weights + a JSON sidecar, written atomically.

An artifact `<stem>` is the pair `<stem>.safetensors` (tensors) and `<stem>.json` (what they belong
to). Files are written to a temporary file in the same folder and renamed, so a crash or bad input
never leaves a torn file; the sidecar is written last and records a fingerprint of the tensors, so
a pair from two different saves is detected on load. Nothing here unpickles anything.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pathrt.errors import ArtifactError, IncompatibleArtifactError, StorageError
from pathrt.schemas import validate
from pathrt.version import __version__

FORMAT_VERSION = 1
MAX_SIDECAR_BYTES = 16 << 20


def artifact_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(`<stem>.safetensors`, `<stem>.json`) for a stem or for either file's path."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Calls `write(tmp)` on a temporary file next to `path`, then renames it onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except Exception as exc:
        if _out_of_space(exc):
            raise StorageError(f"no space left to write {target} ({exc}); free disk space (or raise the quota) and "
                               f"run again: {target} and every earlier output are unchanged") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _out_of_space(exc: BaseException) -> bool:
    """True for a write refused for lack of space; safetensors reports it as text ("os error 28")."""
    if isinstance(exc, OSError) and exc.errno in _SPACE_ERRNOS:
        return True
    text = str(exc)
    return any(f"os error {code})" in text for code in _SPACE_ERRNOS)


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Writes `data` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def read_json(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Reads a sidecar of format `kind`, checking its size, syntax, format name and version."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p} does not exist; expected the JSON sidecar of a pathrt {kind} artifact")
    if p.stat().st_size > MAX_SIDECAR_BYTES:
        raise ArtifactError(f"{p} is {p.stat().st_size} bytes, too large for a sidecar")
    data = parse_json(p.read_bytes(), str(p))
    if not isinstance(data, dict) or data.get("format") != kind:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ArtifactError(f"{p} is not a pathrt {kind} sidecar (format {found!r})")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{p} has format_version {version!r}; this pathrt reads version "
                            f"{FORMAT_VERSION}: re-create the artifact with this version")
    validate(data, kind, str(p))
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes | str, where: str) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity, nesting bounded by Python's parser); ArtifactError otherwise."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{where} is not valid JSON ({str(exc)[:200]}); the file is corrupted") from exc


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Saves tensors to a safetensors file, atomically (contiguous CPU copies, no shared storage)."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, str(tmp)))


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Loads a safetensors file; unreadable or corrupted files raise ArtifactError."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p} does not exist; expected a safetensors weights file")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{p} is not a readable safetensors file ({exc}); the file is corrupted") from exc


def check_state(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
                what: str, exact_dtypes: bool = True) -> None:
    """Raises IncompatibleArtifactError unless `state` has exactly the names and shapes (and, with
    `exact_dtypes`, the dtypes) of `expected` (e.g. a model's state dict built on the meta device)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))

    def fits(t: torch.Tensor, want: torch.Tensor) -> bool:
        same_kind = t.is_floating_point() == want.is_floating_point()
        return t.shape == want.shape and same_kind and (not exact_dtypes or t.dtype == want.dtype)

    wrong = [f"{k}: file {tuple(state[k].shape)} {state[k].dtype} vs {tuple(v.shape)} {v.dtype}"
             for k, v in expected.items() if k in state and not fits(state[k], v)]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"wrong shapes or dtypes {wrong[:5]}" if wrong else ""]
        raise IncompatibleArtifactError(f"the tensors in {source} do not fit {what}: "
                                        + "; ".join(p for p in parts if p))


def tensor_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _pending(sidecar: Path) -> Path:
    return sidecar.with_name(sidecar.name + ".pending")


def save_artifact(path: str | os.PathLike[str], kind: str, tensors: Mapping[str, torch.Tensor],
                  meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Writes the artifact `<stem>` of format `kind`; returns (weights path, sidecar path).

    The pair is replaced as one: the new sidecar (`meta` plus format, version and the tensors'
    fingerprint) is first written whole to `<stem>.json.pending`, then the weights replace the old
    ones, then the pending sidecar is renamed over the old. A process killed anywhere in between
    leaves either the old pair or new weights with their pending sidecar, which `load_artifact`
    accepts; never weights without a sidecar that describes them.
    """
    weights, sidecar = artifact_paths(path)
    pending = _pending(sidecar)
    write_json(pending, {**meta, "format": kind, "format_version": FORMAT_VERSION, "pathrt_version": __version__,
                         "fingerprint": tensor_fingerprint(tensors), "weights_file": weights.name})
    save_tensors(weights, tensors)
    os.replace(pending, sidecar)
    return weights, sidecar


def load_artifact(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Reads the artifact `<stem>` of format `kind`: (sidecar, tensors), refusing a tensor file whose
    fingerprint differs from the one its sidecar recorded (the two files of different saves). The
    sidecar of a save interrupted after its weights were replaced is `<stem>.json.pending`."""
    weights, sidecar = artifact_paths(path)
    pending = _pending(sidecar)
    # a first save killed before its final rename leaves only the pending sidecar
    meta = read_json(pending if pending.is_file() and not sidecar.is_file() else sidecar, kind)
    tensors = load_tensors(weights)
    actual = tensor_fingerprint(tensors)
    if meta.get("fingerprint") != actual and pending.is_file():
        candidate = read_json(pending, kind)
        if candidate.get("fingerprint") == actual:
            return candidate, tensors
    recorded = str(meta.get("fingerprint"))
    if actual != recorded:
        raise IncompatibleArtifactError(f"{weights} does not match its sidecar {sidecar.name} (weights fingerprint "
                                        f"{actual[:12]}…, sidecar says {recorded[:12]}…): the two files come from "
                                        "different saves; save the artifact again")
    return meta, tensors
