"""The pathrt error hierarchy.

Every error raised on purpose by the public API derives from `PathrtError` and from `ValueError`
(bad values, artifacts, inputs) so that callers can catch either; `StorageError` (no space left
to write an output) derives from `OSError` instead, since nothing the caller passed was wrong.
Messages say what was wrong and how to fix it. The CLI turns each into one line on stderr and the
exit code of `EXIT_CODES`.
"""

from __future__ import annotations


class PathrtError(Exception):
    """Base class of every error pathrt raises on purpose."""


class ArtifactError(PathrtError, ValueError):
    """An artifact (weights, sidecar, checkpoint) is missing, unreadable, corrupted or of a wrong format."""


class IncompatibleArtifactError(ArtifactError):
    """An artifact is valid but belongs to something else (another architecture, weights or spec)."""


class BundleError(ArtifactError):
    """A bundle cannot be written for this model, or a file is not a readable pathrt bundle."""


class InputError(PathrtError, ValueError):
    """Images, masks or arguments handed to pathrt have a wrong shape, dtype or value."""


class DatasetError(PathrtError, ValueError):
    """A data set path is missing, empty or holds files that are not images."""


class SpecError(PathrtError, ValueError):
    """A pathway-layer spec cannot be built for a model (unknown module, unsupported output)."""


class CanonizationError(PathrtError, ValueError):
    """BatchNorm folding cannot be applied (training mode, unsupported layer)."""


class ServingError(PathrtError, RuntimeError):
    """The Triton server could not start, or a served request failed (missing `pathrt[serve]`, a port in
    use, the server's own error message)."""


class DistributedError(PathrtError, RuntimeError):
    """A distributed run could not start or failed: Ray or torch.distributed missing or unreachable, a
    worker that kept dying, no loopback-only network namespace where one is required."""


class StorageError(PathrtError, OSError):
    """An output could not be written (disk full, quota, file size limit); earlier outputs are intact."""


# `pathrt` exit codes, most specific class first (2 is argparse's usage error, 1 an unexpected crash)
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (IncompatibleArtifactError, 4),
    (ArtifactError, 3),
    (StorageError, 6),
    (PathrtError, 5),
)


def exit_code(error: BaseException) -> int:
    """The `pathrt` exit code of a PathrtError (5 for bad inputs and any other PathrtError)."""
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))
