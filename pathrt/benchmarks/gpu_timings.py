"""Timings for `make gpu-check`: memory-bound ops against the device's copy bandwidth,
`pathway_conv2d` against cuDNN dense and cuDNN over the union of kept channels (the GPU crossover
of the strategy picker), and explain latency (with and without CUDA-graph capture), throughput and
peak memory.

Medians of CUDA-event timings on a GPU (perf_counter on the CPU, where the dry run measures small
shapes only to exercise the code). Inputs of the memory-bound ops rotate between two buffers each
larger than the H200's 60 MB L2, so no timing reads from cache. Bytes are counted by hand (read +
write of every element, small vectors ignored).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from pathrt.benchmarks.paths import BenchModel
from pathrt.runtime import ops

KEEPS = (1.0, 0.5, 0.2, 0.05)
CONV_BATCHES = (1, 64, 256)
VGG11_CONVS = ((64, 128, 32), (256, 256, 16), (512, 512, 8))  # (c_in, c_out, map size) of VGG-11 at 64×64


def median_ms(fn: Callable[[int], Any], device: torch.device, warmup: int = 3, repeats: int = 10,
              budget_s: float = 2.0) -> float:
    """Median milliseconds of `fn(i)` (i: the call's index, to rotate inputs); fewer repeats once
    `budget_s` is spent."""
    for i in range(warmup):
        fn(i)
    times = []
    spent = time.perf_counter()
    for i in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn(i)
            times.append(1e3 * (time.perf_counter() - t))
        if time.perf_counter() - spent > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def calls(fn: Callable[..., Any], *args: Any) -> Callable[[int], Any]:
    """`fn(*args)` as a timed callable (arguments bound now, the call index ignored)."""
    return lambda i: fn(*args)


def _dense_conv(x, weight, bias, in_mask, out_mask) -> torch.Tensor:
    """cuDNN over every channel, then the masked epilogue (the "dense" strategy)."""
    y = F.conv2d(x * in_mask[:, :, None, None], weight, None, 1, 1)
    return ops.masked_bias_relu(y, bias, out_mask, inplace=True)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Device-to-device copy rate in GB/s (read + write counted), the ceiling of memory-bound ops."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    ms = median_ms(lambda i: dst.copy_(src), device)
    return 2 * nbytes / ms / 1e6


def memory_bound(device: torch.device, scale: int, ceiling: float) -> list[dict[str, Any]]:
    """GB/s of the memory-bound ops at sizes of a batch-256 explanation (divided by `scale`)."""
    g = torch.Generator().manual_seed(0)
    n = max(256 // scale, 1)
    rows = []

    def row(op: str, shape: tuple, nbytes: float, fn: Callable[[int], Any]) -> None:
        ms = median_ms(fn, device)
        rate = nbytes / ms / 1e6
        rows.append({"op": op, "shape": "x".join(map(str, shape)), "MB": round(nbytes / 1e6, 1), "ms": ms,
                     "GB/s": rate, "% of copy": 100 * rate / ceiling})

    x = [torch.randn(n, 64, 64, 64, generator=g).to(device) for _ in range(2)]
    bias, mask = torch.randn(64).to(device), (torch.rand(n, 64, generator=g) < 0.5).to(device)
    row("masked_bias_relu", tuple(x[0].shape), 8 * x[0].numel(), lambda i: ops.masked_bias_relu(x[i % 2], bias, mask))
    row("masked_bias_relu_", tuple(x[0].shape), 8 * x[0].numel(),
        lambda i: ops.masked_bias_relu(x[i % 2], bias, mask, inplace=True))
    logits = [torch.randn(64 * n, 4224, generator=g).to(device) for _ in range(2)]
    row("daq_threshold_pack", tuple(logits[0].shape), 9.125 * logits[0].numel(),
        lambda i: ops.daq_threshold_pack(logits[i % 2]))
    masks = [(torch.rand(256 * n, 4224, generator=g) < 0.5).to(device) for _ in range(2)]
    row("pack_masks", tuple(masks[0].shape), 1.125 * masks[0].numel(), lambda i: ops.pack_masks(masks[i % 2]))
    maps = [[torch.randn(n, 64, 32, 32, generator=g).to(device)] for _ in range(2)]
    tail = [t.to(device) for t in (torch.randn(16), torch.randn(16, 64), torch.randn(16), torch.ones(16),
                                   torch.zeros(16), torch.randn(1, 16))]
    row("rfe_tail (mean_pool)", tuple(maps[0][0].shape), 4 * maps[0][0].numel(),
        lambda i: ops.rfe_tail(maps[i % 2], *tail, 1e-5))
    return rows


def _union_conv(x, weight, bias, in_mask, out_mask) -> torch.Tensor:
    """cuDNN over the union of the batch's kept channels, then each sample's epilogue."""
    iu, ou = in_mask.any(0).nonzero().squeeze(1), out_mask.any(0).nonzero().squeeze(1)
    out = torch.zeros(x.shape[0], weight.shape[0], *x.shape[2:], device=x.device)
    out[:, ou] = F.conv2d(x.index_select(1, iu), weight[ou][:, iu], None, 1, 1)
    return ops.masked_bias_relu(out, bias, out_mask, inplace=True)


def conv_crossover(device: torch.device, shapes=VGG11_CONVS, batches=CONV_BATCHES, keeps=KEEPS) -> list[dict[str, Any]]:
    """pathway_conv2d (sparse) against cuDNN dense + epilogue and cuDNN over the union, per keep."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for c_in, c_out, size in shapes:
        weight = (torch.randn(c_out, c_in, 3, 3, generator=g) / (9 * c_in) ** 0.5).to(device)
        bias = torch.randn(c_out, generator=g).to(device)
        for batch in batches:
            x = torch.randn(batch, c_in, size, size, generator=g).to(device)
            for keep in keeps:
                in_mask = (torch.rand(batch, c_in, generator=g) < keep).to(device)
                out_mask = (torch.rand(batch, c_out, generator=g) < keep).to(device)
                args = (x, weight, bias, in_mask, out_mask)
                sparse = median_ms(calls(ops.pathway_conv2d, x, weight, bias, None, in_mask, out_mask, (1, 1),
                                         (1, 1), True), device)
                dense = median_ms(calls(_dense_conv, *args), device)
                union = median_ms(calls(_union_conv, *args), device)
                u = float(in_mask.any(0).float().mean() * out_mask.any(0).float().mean())
                rows.append({"layer": f"{c_in}->{c_out}@{size}", "batch": batch, "keep": keep,
                             "union_kept_product": round(u, 3), "sparse_ms": sparse, "dense_ms": dense,
                             "union_ms": union, "best": min(("sparse", sparse), ("dense", dense), ("union", union),
                                                            key=lambda t: t[1])[0]})
    return rows


def _graph_replay_ms(explainer, x: torch.Tensor, strategy: str | None) -> tuple[float | None, str]:
    """Batch-1 explain captured in a CUDA graph and replayed (launch overhead gone), or why not."""
    engine = explainer.engine
    runner = getattr(engine, "runner", None)
    saved = runner.strategy if runner is not None else None
    try:
        if runner is not None:
            runner.strategy = strategy
        static = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                engine.explain(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            engine.explain(static)
        return median_ms(lambda i: graph.replay(), x.device, repeats=50), "captured"
    except Exception as exc:  # a capture failure is a finding: host syncs in the path
        return None, f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    finally:
        if runner is not None:
            runner.strategy = saved


def explain_timings(model: BenchModel, device: torch.device, backends: tuple[str, ...],
                    throughput_batches: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per backend: batch-1 latency (eager launches, and CUDA-graph replay on a GPU), images/s at
    `throughput_batches`, and peak device memory."""
    rows = []
    for name in backends:
        explainer = model.backend(name, device.type)
        if isinstance(explainer, str):
            rows.append({"model": model.name, "backend": name, "what": "skipped", "value": explainer})
            continue
        x1 = model.inputs(1).to(device)
        ms = median_ms(calls(explainer.explain, x1), device, repeats=30)
        rows.append({"model": model.name, "backend": name, "what": "batch-1 latency ms", "value": ms})
        if device.type == "cuda":
            for strategy in (None, "sparse", "dense"):
                replay, how = _graph_replay_ms(explainer, x1, strategy)
                rows.append({"model": model.name, "backend": name, "what": f"batch-1 CUDA graph ms "
                             f"(strategy {strategy or 'policy'})", "value": replay if replay is not None else how})
        for batch in throughput_batches:
            x = model.inputs(batch).to(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            ms = median_ms(calls(explainer.explain, x), device, warmup=1, repeats=5, budget_s=10.0)
            rows.append({"model": model.name, "backend": name, "what": f"images/s at batch {batch}",
                         "value": 1e3 * batch / ms})
            if device.type == "cuda":
                rows.append({"model": model.name, "backend": name, "what": f"peak MB at batch {batch}",
                             "value": torch.cuda.max_memory_allocated(device) / 1e6})
    return rows
