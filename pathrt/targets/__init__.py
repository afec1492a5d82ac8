"""Target-model adapters: architectures, pathway-layer specs, feature capture, the pathway forward,
canonization (BatchNorm folding), and the target weights artifact. Knows nothing of generators."""

from pathrt.targets.canonize import BatchNormFolding, canonize, canonized, canonized_copy, foldable_pairs
from pathrt.targets.models import ARCHITECTURES, SmallVGG, build_model, model_factory, seeded
from pathrt.targets.pathway import Capture, capture_features, count_hooks, normalize_masks, pathway_forward
from pathrt.targets.spec import PathwayLayer, PathwaySpec, build_spec, default_pathway_modules, spec_from_modules
from pathrt.targets.target import Target, create_target, import_weights, load_target, save_target, wrap_model

__all__ = [
    "ARCHITECTURES",
    "BatchNormFolding",
    "Capture",
    "PathwayLayer",
    "PathwaySpec",
    "SmallVGG",
    "Target",
    "build_model",
    "build_spec",
    "canonize",
    "canonized",
    "canonized_copy",
    "capture_features",
    "count_hooks",
    "create_target",
    "default_pathway_modules",
    "foldable_pairs",
    "import_weights",
    "load_target",
    "model_factory",
    "normalize_masks",
    "pathway_forward",
    "save_target",
    "seeded",
    "spec_from_modules",
    "wrap_model",
]
