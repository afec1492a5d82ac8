"""The triton backend: the lowered plan run with the Triton kernels of `pathrt.kernels` (NCHW), the
generator through the Triton generator kernels. Runs on a CUDA GPU; on CPU only under
`TRITON_INTERPRET=1` (set before importing triton), which is how the tests check it."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

from pathrt.runtime.backends.plan_backend import PlanBackend
from pathrt.runtime.fast_path import KernelSet


class TritonBackend(PlanBackend):
    name = "triton"

    @classmethod
    def unavailable_on(cls, device: torch.device) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
            return None
        return (f"Triton kernels need a CUDA GPU (the tensors are on {device.type}); on CPU they run only under "
                "TRITON_INTERPRET=1, for tests")

    @classmethod
    def kernels(cls, device: torch.device) -> tuple[KernelSet, ModuleType]:
        from pathrt.kernels import triton_fused, triton_generator  # imports triton: only once it is usable

        kernels = KernelSet("triton", triton_fused.daq_threshold_pack, triton_fused.masked_bias_relu,
                            triton_fused.pathway_conv2d)
        return kernels, triton_generator
