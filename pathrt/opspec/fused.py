"""The fused deployed-path ops (SPEC §8): references, checks and fakes of `daq_threshold_pack`,
`masked_bias_relu(_)` and `pathway_conv2d` (schemas in `pathrt.opspec.library`). The references are
the specification the C++/CUDA and Triton kernels are tested against."""

from __future__ import annotations

import torch

from pathrt.opspec.masks import MASK_THRESHOLD, pack_masks_reference


def _check_channel_mask(op: str, mask: torch.Tensor, n: int, c: int, name: str, float_allowed: bool) -> None:
    allowed = (torch.bool, torch.float32) if float_allowed else (torch.bool,)
    if mask.dtype not in allowed:
        raise TypeError(f"{op}: {name} must be {' or '.join(str(t).removeprefix('torch.') for t in allowed)}, "
                        f"got {mask.dtype}")
    if tuple(mask.shape) != (n, c):
        raise ValueError(f"{op}: {name} must have shape ({n}, {c}) (one row per sample), got {tuple(mask.shape)}")


def check_logits(logits: torch.Tensor) -> None:
    if logits.dtype != torch.float32:
        raise TypeError(f"pathrt::daq_threshold_pack: logits must be float32, got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"pathrt::daq_threshold_pack: logits must be 2-D (N, K), got shape {tuple(logits.shape)}; "
                         "concatenate the per-layer head logits with torch.cat(dim=1)")


def check_masked_bias_relu(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                           fill: torch.Tensor | None = None) -> None:
    op = "pathrt::masked_bias_relu"
    if x.dtype != torch.float32:
        raise TypeError(f"{op}: x must be float32, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    _check_channel_mask(op, mask, x.shape[0], x.shape[1], "mask", True)
    for name, v in (("bias", bias), ("fill", fill)):
        if v is not None and (v.dtype != torch.float32 or tuple(v.shape) != (x.shape[1],)):
            raise ValueError(f"{op}: {name} must be float32 of shape ({x.shape[1]},), got {v.dtype} {tuple(v.shape)}")


def _conv_output_shape(x: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int]) -> tuple:
    op = "pathrt::pathway_conv2d"
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise TypeError(f"{op}: x and weight must be float32, got {x.dtype} and {weight.dtype}")
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: x (N, C_in, H, W) and weight (C_out, C_in, kH, kW) do not match: "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if len(stride) != 2 or len(padding) != 2 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: stride must be 2 positive ints and padding 2 non-negative ints, "
                         f"got {stride}, {padding}")
    ho = (x.shape[2] + 2 * padding[0] - weight.shape[2]) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - weight.shape[3]) // stride[1] + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"{op}: the kernel {tuple(weight.shape)} does not fit the padded input {tuple(x.shape)}")
    return x.shape[0], weight.shape[0], ho, wo


def check_pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, stride, padding) -> tuple:
    op = "pathrt::pathway_conv2d"
    shape = _conv_output_shape(x, weight, stride, padding)
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (shape[1],)):
        raise ValueError(f"{op}: bias must be float32 of shape ({shape[1]},), got {bias.dtype} {tuple(bias.shape)}")
    if residual is not None and (residual.dtype != torch.float32 or tuple(residual.shape) != tuple(shape)):
        raise ValueError(f"{op}: residual must be float32 of shape {tuple(shape)}, got {residual.dtype} "
                         f"{tuple(residual.shape)}")
    if in_mask is not None:
        _check_channel_mask(op, in_mask, x.shape[0], x.shape[1], "in_mask", False)
    if out_mask is not None:
        _check_channel_mask(op, out_mask, x.shape[0], weight.shape[0], "out_mask", False)
    return shape


def daq_threshold_pack_reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of `pathrt::daq_threshold_pack` (see the module docstring)."""
    check_logits(logits)
    scores = torch.sigmoid(logits)
    masks = scores >= MASK_THRESHOLD
    return scores, masks, pack_masks_reference(masks), masks.sum(1)


def masked_bias_relu_reference(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                               fill: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of `pathrt::masked_bias_relu` (see the module docstring)."""
    check_masked_bias_relu(x, bias, mask, fill)
    return masked_bias_relu_math(x, bias, mask, fill)


def removed_value(y: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
    """What a removed channel of `y` (N, C, H, W) holds: 0 (zero ablation) or fill[c] (mean ablation)."""
    if fill is None:
        return torch.zeros((), dtype=y.dtype, device=y.device)
    return fill.to(y.dtype)[None, :, None, None]


def masked_bias_relu_math(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                          fill: torch.Tensor | None = None) -> torch.Tensor:
    """The reference's arithmetic without its float32 checks (any float dtype; what ONNX export traces)."""
    y = torch.relu(x if bias is None else x + bias[None, :, None, None])
    if mask.dtype == torch.bool:
        return torch.where(mask[:, :, None, None], y, removed_value(y, fill))
    return torch.where(mask[:, :, None, None] == 0, removed_value(y, fill), y * mask[:, :, None, None])


def masked_bias_relu_inplace_reference(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                                       fill: torch.Tensor | None = None) -> None:
    """Reference of `pathrt::masked_bias_relu_`: writes masked_bias_relu(x, bias, mask, fill) into x."""
    x.copy_(masked_bias_relu_reference(x, bias, mask, fill))


def pathway_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             residual: torch.Tensor | None, in_mask: torch.Tensor | None,
                             out_mask: torch.Tensor | None, stride: list[int], padding: list[int],
                             relu: bool) -> torch.Tensor:
    """Reference of `pathrt::pathway_conv2d` (see the module docstring): dense conv, then masks."""
    check_pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, stride, padding)
    if in_mask is not None:
        x = torch.where(in_mask[:, :, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    y = torch.nn.functional.conv2d(x, weight, bias, list(stride), list(padding))
    if residual is not None:
        y = y + residual
    if relu:
        y = torch.relu(y)
    if out_mask is not None:
        y = torch.where(out_mask[:, :, None, None], y, torch.zeros((), dtype=y.dtype, device=y.device))
    return y



def daq_threshold_pack_fake(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    check_logits(logits)
    n, k = logits.shape
    return (logits.new_empty((n, k)), logits.new_empty((n, k), dtype=torch.bool),
            logits.new_empty((n, (k + 7) // 8), dtype=torch.uint8), logits.new_empty((n,), dtype=torch.int64))


def dense_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the 4-D kernels write: channels-last for channels-last inputs, else NCHW (as in C++)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def masked_bias_relu_fake(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                          fill: torch.Tensor | None = None) -> torch.Tensor:
    check_masked_bias_relu(x, bias, mask, fill)
    return torch.empty_like(x, memory_format=dense_format(x))


def masked_bias_relu_inplace_fake(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                                  fill: torch.Tensor | None = None) -> None:
    check_masked_bias_relu(x, bias, mask, fill)


def pathway_conv2d_fake(x, weight, bias, residual, in_mask, out_mask, stride, padding, relu) -> torch.Tensor:
    shape = check_pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, stride, padding)
    return x.new_empty(shape).contiguous(memory_format=dense_format(x))


