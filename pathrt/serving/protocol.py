"""What a served explainer takes and returns: tensor names, dtypes, dims and the per-request checks.

The Triton model (`pathrt.serving.triton_model`), the model-repository writer and the client all read
these definitions, so the three agree by construction. Dims exclude the batch axis (Triton's
convention for a model with `max_batch_size > 0`); a per-image scalar has dims (1,), so it travels
as (N, 1) on the wire (the client returns (N,)).

Inputs: `images` (N, C, H, W) float32, raw pixels in [0, 1] (the server applies the target's
preprocessing, `Target.preprocess`) unless the server was started with `inputs="preprocessed"`;
`target_class` (N, 1) int64, optional: the class to explain per image (default: the prediction).
Outputs: the packed masks (`pathrt::pack_masks` layout), kept counts, logits, pathway logits, Y, O,
the explained class and the scores; a request gets those it names (all when it names none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pathrt.errors import InputError

IMAGES = "images"
TARGET_CLASS = "target_class"
SCORES = "scores"
RAW_TOLERANCE = 1e-3  # raw pixels may overshoot [0, 1] this much (resampling) before a request is refused

InputKind = Literal["raw", "preprocessed"]
INPUT_KINDS: tuple[str, ...] = ("raw", "preprocessed")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the served model. dtype: Triton's name without `TYPE_` (FP32, INT64, UINT8)."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False


def input_specs(input_shape: tuple[int, int, int]) -> tuple[TensorSpec, ...]:
    return (TensorSpec(IMAGES, "FP32", tuple(input_shape)), TensorSpec(TARGET_CLASS, "INT64", (1,), optional=True))


def output_specs(total_channels: int, num_classes: int) -> tuple[TensorSpec, ...]:
    """The outputs in the order the model writes them (a request gets those it names)."""
    return (TensorSpec("packed", "UINT8", ((total_channels + 7) // 8,)), TensorSpec("kept", "INT64", (1,)),
            TensorSpec("logits", "FP32", (num_classes,)), TensorSpec("pathway_logits", "FP32", (num_classes,)),
            TensorSpec("Y", "FP32", (1,)), TensorSpec("O", "FP32", (1,)), TensorSpec("classes", "INT64", (1,)),
            TensorSpec(SCORES, "FP32", (total_channels,)))


# What `Client` asks for: all an Explanation needs (Y, O and kept follow from them); fewer tensors per
# response cost the server less. Other clients may ask for any outputs; one that names none gets all.
CLIENT_OUTPUTS = ("packed", "logits", "pathway_logits", "classes")


def check_input_kind(kind: str) -> InputKind:
    if kind not in INPUT_KINDS:
        raise InputError(f"inputs must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
    return kind  # type: ignore[return-value]


def request_error(images: np.ndarray, classes: np.ndarray | None, input_shape: tuple[int, int, int],
                  num_classes: int, inputs: InputKind) -> str | None:
    """Why one request cannot be explained, or None. Triton has checked the dtypes, the per-image dims
    and the batch limit against the model config already; this checks what the config cannot say."""
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape):
        return (f"'{IMAGES}' must be (N, {', '.join(map(str, input_shape))}) float32, got shape "
                f"{tuple(images.shape)}")
    n = images.shape[0]
    if n == 0:
        return f"'{IMAGES}' is an empty batch (N = 0): send at least one image"
    finite = np.isfinite(images.reshape(n, -1)).all(1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        return (f"{len(bad)} of {n} images contain NaN or Inf values (first: image {int(bad[0])} of this request); "
                "drop or repair them")
    if inputs == "raw":
        low, high = float(images.min()), float(images.max())
        if low < -RAW_TOLERANCE or high > 1 + RAW_TOLERANCE:
            return (f"pixel values lie in [{low:.3g}, {high:.3g}], but this server takes raw images in [0, 1] and "
                    "applies the target's preprocessing itself; send raw pixels / 255, or start the server with "
                    "--inputs preprocessed")
    if classes is not None:
        if classes.size != n:
            return f"'{TARGET_CLASS}' names {classes.size} classes for {n} images: send one per image, shape (N, 1)"
        flat = classes.reshape(-1)
        out = np.flatnonzero((flat < 0) | (flat >= num_classes))
        if len(out):
            return (f"'{TARGET_CLASS}' must lie in [0, {num_classes}), got {int(flat[out[0]])} (image {int(out[0])} of "
                    "this request)")
    return None
