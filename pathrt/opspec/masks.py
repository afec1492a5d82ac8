"""Bit-packed pathway masks: the threshold, and the references, checks and fakes of `pack_masks` and
`pairwise_iou` (schemas in `pathrt.opspec.library`)."""

from __future__ import annotations

import torch

MASK_THRESHOLD = 0.5  # SPEC §3: kept iff sigmoid(logit) >= 0.5; the C++ kernels use the same constant

_BIT_WEIGHTS = tuple(1 << j for j in range(8))


def check_masks(masks: torch.Tensor) -> None:
    if masks.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"pathrt::pack_masks: masks must be bool or uint8, got {masks.dtype}; "
                        "convert with masks.bool()")
    if masks.dim() != 2:
        raise ValueError(f"pathrt::pack_masks: masks must be 2-D (N, K), got shape {tuple(masks.shape)}; "
                         "flatten the per-layer masks with torch.cat(dim=1)")


def check_packed_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype != torch.uint8 or b.dtype != torch.uint8:
        raise TypeError("pathrt::pairwise_iou: packed masks must be uint8 (from pathrt::pack_masks), "
                        f"got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError("pathrt::pairwise_iou: packed masks must be 2-D (N, B) and (M, B), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError("pathrt::pairwise_iou: packed masks must have the same number of bytes per row, "
                         f"got {a.shape[1]} and {b.shape[1]}; pack masks of the same pathway spec")
    if a.device != b.device:
        raise ValueError(f"pathrt::pairwise_iou: a and b are on different devices ({a.device}, {b.device})")


def pack_masks_reference(masks: torch.Tensor) -> torch.Tensor:
    """Reference of `pathrt::pack_masks` (see the module docstring)."""
    check_masks(masks)
    n, k = masks.shape
    nbytes = (k + 7) // 8
    bits = torch.zeros(n, nbytes * 8, dtype=torch.uint8, device=masks.device)
    bits[:, :k] = masks != 0
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=masks.device)
    return (bits.view(n, nbytes, 8) * weights).sum(dim=-1).to(torch.uint8)


def unpack_masks(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `pack_masks`: packed uint8 (N, B) -> bool (N, k). Needs k <= 8·B."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"unpack_masks: expected uint8 (N, B), got {packed.dtype} {tuple(packed.shape)}")
    if not 0 <= k <= packed.shape[1] * 8:
        raise ValueError(f"unpack_masks: k={k} does not fit in {packed.shape[1]} bytes per row")
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], packed.shape[1] * 8)[:, :k].bool()


def pairwise_iou_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference of `pathrt::pairwise_iou` (see the module docstring); exact for K < 2**24."""
    check_packed_pair(a, b)
    k = a.shape[1] * 8
    ua = unpack_masks(a, k).float()
    ub = unpack_masks(b, k).float()
    inter = ua @ ub.T
    union = ua.sum(1, keepdim=True) + ub.sum(1).unsqueeze(0) - inter
    return torch.where(union == 0, torch.ones_like(inter), inter / union.clamp_min(1))



def pack_masks_fake(masks: torch.Tensor) -> torch.Tensor:
    check_masks(masks)
    return masks.new_empty((masks.shape[0], (masks.shape[1] + 7) // 8), dtype=torch.uint8)


def pairwise_iou_fake(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    check_packed_pair(a, b)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.float32)


