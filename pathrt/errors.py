"""The pathrt error hierarchy.

Every error raised on purpose by the public API derives from `PathrtError` and from `ValueError`
(bad values, artifacts, inputs) so that callers can catch either. Messages say what was wrong and
how to fix it.
"""

from __future__ import annotations


class PathrtError(Exception):
    """Base class of every error pathrt raises on purpose."""


class ArtifactError(PathrtError, ValueError):
    """An artifact (weights, sidecar, checkpoint) is missing, unreadable, corrupted or of a wrong format."""


class IncompatibleArtifactError(ArtifactError):
    """An artifact is valid but belongs to something else (another architecture, weights or spec)."""


class InputError(PathrtError, ValueError):
    """Images, masks or arguments handed to pathrt have a wrong shape, dtype or value."""


class DatasetError(PathrtError, ValueError):
    """A data set path is missing, empty or holds files that are not images."""


class SpecError(PathrtError, ValueError):
    """A pathway-layer spec cannot be built for a model (unknown module, unsupported output)."""


class CanonizationError(PathrtError, ValueError):
    """BatchNorm folding cannot be applied (training mode, unsupported layer)."""
