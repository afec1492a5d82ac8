"""pathrt: explain image classifiers with neural pathways (GEN-CNP), fast and deployable."""

from __future__ import annotations

import torch  # noqa: F401  (torch must be imported before the compiled extension)

from pathrt import errors
from pathrt.runtime import ops  # noqa: F401  (declares torch.ops.pathrt.*)
from pathrt.version import __version__

__all__ = ["__version__", "errors"]
