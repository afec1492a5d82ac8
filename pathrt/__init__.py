"""pathrt: explain image classifiers with neural pathways (GEN-CNP), fast and deployable.

The public API is importable from here (`from pathrt import Explainer, Target, ...`), as users of
torchvision or captum expect; the submodules hold the rest (layers: docs/architecture.md).
"""

from __future__ import annotations

# isort: off
from pathrt.threads import choose_wait_policy

choose_wait_policy()  # before torch loads OpenMP: the command's threads spin briefly, then sleep (pathrt.threads)

import torch  # noqa: F401  (torch must be imported before the compiled extension)

# isort: on

import pathrt.export  # noqa: F401  (registers the onnx backend; onnx itself is imported only when used)
from pathrt import errors, metrics
from pathrt.data import load_digits
from pathrt.generator import GeneratorConfig, PathwayGenerator, load_generator, save_generator
from pathrt.runtime import Explainer, Explanation, pack_masks, pairwise_iou, saliency_map, unpack_masks
from pathrt.targets import (
    PathwaySpec,
    Target,
    build_spec,
    create_target,
    load_target,
    model_factory,
    save_target,
    wrap_model,
)
from pathrt.targets.training import TargetTrainingConfig, train_target
from pathrt.training import GeneratorTrainingConfig, train_generator
from pathrt.transfer import build_class_pathways, evaluate_transfer
from pathrt.version import __version__

__all__ = [
    "Explainer", "Explanation", "GeneratorConfig", "GeneratorTrainingConfig", "PathwayGenerator", "PathwaySpec",
    "Target", "TargetTrainingConfig", "__version__", "build_class_pathways", "build_spec", "create_target", "errors",
    "evaluate_transfer", "load_digits", "load_generator", "load_target", "metrics", "model_factory", "pack_masks",
    "pairwise_iou", "saliency_map", "save_generator", "save_target", "train_generator", "train_target",
    "unpack_masks", "wrap_model",
]
