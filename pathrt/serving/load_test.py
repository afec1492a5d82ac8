"""Load test of the served explainer (`pathrt bench --serve`), loopback only, bounded in time.

Starts `pathrt.serving.Server` (Triton through PyTriton, our Python-backend model) with the
embedded model on free 127.0.0.1 ports, then for each concurrency level keeps that many one-image
gRPC requests in flight for a fixed duration (asyncio over `tritonclient.grpc.aio`, one process, so
the load generator's own CPU use is small and is on the same cores: it is part of what is
measured). Per level: throughput, p50/p99 latency, errors, and the batch sizes Triton's dynamic
batcher formed (from its statistics). The baseline is the same backend called in-process on the
same images at the same batch sizes (the batches the server ran, timed one by one with the server
idle): the served throughput is reported as a fraction of it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathrt.benchmarks.harness import build_models
from pathrt.report import markdown_table
from pathrt.serving.client import Client
from pathrt.serving.protocol import CLIENT_OUTPUTS
from pathrt.serving.repository import Batching, Instances, explainer_config
from pathrt.serving.server import Endpoints, Server, free_ports

HEADERS = ["concurrency", "requests", "errors", "images/s", "p50 ms", "p99 ms", "batches formed (size×count)",
           "in-process images/s, same batches", "served / in-process"]


async def _drive(url: str, images: np.ndarray, concurrency: int, duration_s: float) -> tuple[list[float], int]:
    """`concurrency` request loops for `duration_s`: the latency of every good answer (s) and the error count."""
    import tritonclient.grpc.aio as aio
    from tritonclient.grpc import InferInput, InferRequestedOutput

    client = aio.InferenceServerClient(url)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s
    outputs = [InferRequestedOutput(n) for n in CLIENT_OUTPUTS]  # what `Client.explain` asks for

    async def loop(worker: int) -> None:
        nonlocal errors
        i = worker
        while time.perf_counter() < deadline:
            tensor = InferInput("images", [1, *images.shape[1:]], "FP32")
            tensor.set_data_from_numpy(images[i % len(images)][None])
            start = time.perf_counter()
            try:
                await client.infer("pathrt", [tensor], outputs=outputs)
                latencies.append(time.perf_counter() - start)
            except Exception:  # counted: the load test reports every failed request
                errors += 1
            i += concurrency

    try:
        await asyncio.gather(*(loop(w) for w in range(concurrency)))
    finally:
        await client.close()
    return latencies, errors


def _formed(client: Client, before: dict[int, int], answered: int, wait_s: float = 2.0) -> dict[int, int]:
    """The batches run since `before` ({size: count}); Triton records a batch just after answering it,
    so this waits (up to `wait_s`) until they hold the `answered` one-image requests."""
    deadline = time.monotonic() + wait_s
    while True:
        after = client.batch_sizes()
        formed = {b: after[b] - before.get(b, 0) for b in sorted(after) if after[b] > before.get(b, 0)}
        if sum(b * c for b, c in formed.items()) >= answered or time.monotonic() > deadline:
            return formed
        time.sleep(0.05)


def _in_process_seconds(explainer, images: torch.Tensor, batches: dict[int, int], repeats: int = 5) -> float:
    """Seconds the in-process explainer needs for the same batches (median time per batch size × count)."""
    total = 0.0
    for size, count in batches.items():
        x = images[torch.arange(size) % len(images)]
        explainer.explain(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            explainer.explain(x)
            times.append(time.perf_counter() - start)
        total += statistics.median(times) * count
    return total


def serve_bench(workdir: Path, out: Path, concurrency: Sequence[int] = (1, 8, 32), duration_s: float = 10.0,
                backend: str = "auto", batching: Batching | None = None, threads: int = 0) -> str:
    """Runs the load test; writes `out/serve.md` and `serve.json`; returns the table."""
    from pathrt.data import load_digits
    from pathrt.generator import save_generator
    from pathrt.runtime import Explainer
    from pathrt.targets import save_target

    batching = batching or Batching()
    model = build_models(["embedded"], workdir, 0.6, 64)[0]
    target, generator = model.explainer.target, model.explainer.generator
    # raw pixels (the server applies the preprocessing): the digits test split for the trained model
    pixels = (load_digits("test").images if model.images is not None else torch.rand(256, *target.input_shape)).numpy()
    threads = threads or torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pathrt-serve-bench-") as tmp:
        save_target(target, Path(tmp) / "target")
        save_generator(generator, Path(tmp) / "generator", target.fingerprint)
        config = explainer_config(target, Path(tmp) / "target", Path(tmp) / "generator", batching,
                                  Instances((("cpu", 1),)), backend=backend, num_threads=threads)
        http, grpc, metrics = free_ports(3)
        explainer = Explainer(target, generator, backend=backend, num_threads=threads)
        x = target.preprocess(torch.from_numpy(pixels))
        with Server(config, Endpoints("127.0.0.1", http, grpc, metrics)) as server, \
                Client(server.endpoints.grpc_url) as client:
            for level in concurrency:
                before = client.batch_sizes()
                started = time.perf_counter()
                latencies, errors = asyncio.run(_drive(server.endpoints.grpc_url, pixels, level, duration_s))
                wall = time.perf_counter() - started
                formed = _formed(client, before, len(latencies))
                images_done = sum(b * c for b, c in formed.items())
                in_process = images_done / _in_process_seconds(explainer, x, formed) if formed else float("nan")
                ms = sorted(1e3 * t for t in latencies)
                rows.append({"concurrency": level, "requests": len(latencies), "errors": errors,
                             "images_per_s": len(latencies) / wall, "p50_ms": ms[len(ms) // 2] if ms else float("nan"),
                             "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else float("nan"),
                             "batches": formed, "in_process_images_per_s": in_process,
                             "ratio": len(latencies) / wall / in_process if formed else float("nan")})
                print(f"concurrency {level}: {rows[-1]['images_per_s']:.0f} images/s, p99 {rows[-1]['p99_ms']:.1f} ms, "
                      f"{errors} errors, {rows[-1]['ratio']:.0%} of in-process", flush=True)
    table = markdown_table(HEADERS, [[r["concurrency"], r["requests"], r["errors"], f"{r['images_per_s']:.0f}",
                                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                                      " ".join(f"{b}×{c}" for b, c in r["batches"].items()),
                                      f"{r['in_process_images_per_s']:.0f}", f"{r['ratio']:.0%}"] for r in rows])
    head = (f"# pathrt bench --serve\n\n{model.note}. Backend {explainer.backend} ({explainer.backend_reason}), "
            f"{threads} thread(s) in the server's one instance and in-process; batches up to "
            f"{batching.max_batch_size}, queue delay {batching.max_queue_delay_us} µs; {duration_s:.0f} s per level, "
            "one image per request, client (asyncio gRPC) on the same machine.\n\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.md").write_text(head + table + "\n", encoding="utf-8")
    (out / "serve.json").write_text(json.dumps({"note": model.note, "backend": explainer.backend, "threads": threads,
                                                "duration_s": duration_s, "rows": rows}, indent=2), encoding="utf-8")
    return head + table
