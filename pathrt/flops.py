"""FLOP counting (torch's FlopCounterMode): the unit of every cost statement is one plain pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs (multiply-add = 2) that `fn(*args, **kwargs)` spends in matmuls and convolutions.

    Runs with autograd enabled on purpose: under no_grad, nn.TransformerEncoder takes a fused fast
    path whose FLOPs the counter cannot see.
    """
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
