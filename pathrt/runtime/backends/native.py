"""The native backend: the lowered plan run with the C++/CUDA kernels of `pathrt._C` (channels-last
on CPU, NCHW on CUDA), the generator through the fused generator ops, on either device. It is
pathrt's CUDA explain path (the session is CPU-only: its convs are oneDNN's): every op of the path
must have its native kernel for the device, else the backend refuses to prepare, so a build without
CUDA kernels never runs the plain-PyTorch references silently."""

from __future__ import annotations

from types import ModuleType

import torch

from pathrt.kernels import native as extension
from pathrt.runtime.backends.plan_backend import PlanBackend
from pathrt.runtime.fast_path import NATIVE, KernelSet

FUSED_OPS = ("daq_threshold_pack", "masked_bias_relu", "masked_bias_relu_", "pathway_conv2d")
GENERATOR_OPS = ("rfe_tail", "pdn_encoder_layer", "rpd_decode")


class NativeBackend(PlanBackend):
    name = "native"

    @classmethod
    def unavailable_on(cls, device: torch.device) -> str | None:
        if extension.EXTENSION is None:
            return f"the extension pathrt._C is not loaded ({extension.EXTENSION_ERROR})"
        if device.type not in ("cpu", "cuda"):
            return f"no pathrt kernels for device type {device.type!r}"
        key = "CUDA" if device.type == "cuda" else "CPU"
        missing = [name for name in (*FUSED_OPS, *GENERATOR_OPS) if extension.implementations()[name][key] != "native"]
        if missing:
            return f"pathrt._C has no {key} kernels for {', '.join(missing)} (rebuild with `make build`)"
        return None

    @classmethod
    def kernels(cls, device: torch.device) -> tuple[KernelSet, ModuleType]:
        return NATIVE, torch.ops.pathrt

    @classmethod
    def channels_last(cls, device: torch.device) -> bool:
        return device.type == "cpu"
