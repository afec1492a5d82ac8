"""GEN-CNP modules (RFE, PDN, RPD, DAQ), the generator model and its checkpoint. Knows only the
pathway-layer spec of its target, never the target."""

from pathrt.generator.daq import DAQ, hard_mask
from pathrt.generator.generator import (
    GeneratorConfig,
    GeneratorOutput,
    PathwayGenerator,
    load_generator,
    save_generator,
)
from pathrt.generator.pdn import PDN
from pathrt.generator.rfe import RFE
from pathrt.generator.rpd import RPD

__all__ = [
    "DAQ",
    "PDN",
    "RFE",
    "RPD",
    "GeneratorConfig",
    "GeneratorOutput",
    "PathwayGenerator",
    "hard_mask",
    "load_generator",
    "save_generator",
]
