"""Peak memory of a large explain (`pathrt bench --memory`): N images in chunks against one chunk.

Each measurement runs in a fresh process: build the model and explainer, allocate the images (the
caller's data, outside the measurement), explain one image (thread pools, kernels and the session are
then initialized; the heap's mmap threshold is fixed as `pathrt explain` fixes it, see
pathrt.heap), reset the kernel's peak-RSS counter (`/proc/self/clear_refs`), explain, and read
the peak (`VmHWM`). The working set is that peak minus the RSS just before the explain call. The
promise (RELIABILITY.md): N = 4,096 images need at most 1.5x the working set of one 64-image chunk
(the result itself, 5 bytes per neuron and image plus logits, is what grows with N).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pathrt.report import markdown_table


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(model: str, backend: str, images: int, chunk: int, workdir: str, stream: bool) -> dict[str, Any]:
    import torch

    from pathrt.benchmarks.harness import build_models
    from pathrt.heap import limit_heap_growth
    from pathrt.runtime import Explainer

    limit_heap_growth()  # as `pathrt explain` does (see pathrt.heap)
    bench = build_models([model], Path(workdir), 0.6, 8)[0]
    target, generator = bench.explainer.target, bench.explainer.generator
    explainer = Explainer(target, generator, backend=backend, max_batch_size=chunk)
    x = torch.rand(images, *target.input_shape, generator=torch.Generator().manual_seed(0))
    explainer.explain(x[:1])
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap memory back to the OS, so the call's own use shows
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    # explain_iter: each chunk's result is dropped (a caller would save it) before the next
    result_bytes = sum(p.nbytes for p in explainer.explain_iter(x)) if stream else explainer.explain(x).nbytes
    peak = _status_kib("VmHWM")
    return {"model": bench.name, "backend": explainer.backend, "images": images, "chunk": chunk,
            "rss_before_mb": before / 1024, "peak_mb": peak / 1024, "working_set_mb": (peak - before) / 1024,
            "result_mb": result_bytes / 2**20, "input_mb": x.nbytes / 2**20, "streamed": stream}



def measure(model: str, backend: str, images: int, chunk: int, workdir: Path, stream: bool = False) -> dict[str, Any]:
    """One measurement in a fresh process."""
    code = (f"import json; from pathrt.benchmarks.memory import _child; "
            f"print(json.dumps(_child({model!r}, {backend!r}, {images}, {chunk}, {str(workdir)!r}, {stream})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement {model}/{backend} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_bench(models: list[str], backends: list[str], images: int, chunk: int, workdir: Path,
                 out: Path) -> str:
    """Measures one chunk and `images` images per model and backend; writes memory.json/.md; returns the table."""
    rows, records = [], []
    for model in models:
        for backend in backends:
            one = measure(model, backend, chunk, chunk, workdir)
            whole, streamed = (measure(model, backend, images, chunk, workdir, stream) for stream in (False, True))
            ratios = [m["working_set_mb"] / max(one["working_set_mb"], 1e-9) for m in (whole, streamed)]
            records.append({"one_chunk": one, "explain": whole, "explain_iter": streamed, "ratios": ratios})
            rows.append([one["model"], one["backend"], f"{one['working_set_mb']:.1f}",
                         f"{whole['working_set_mb']:.1f} ({ratios[0]:.2f}x)",
                         f"{streamed['working_set_mb']:.1f} ({ratios[1]:.2f}x)", f"{whole['result_mb']:.1f}",
                         f"{one['peak_mb']:.0f} / {whole['peak_mb']:.0f}", f"{whole['input_mb']:.0f}"])
            print(f"{one['model']} {one['backend']}: {chunk} images {one['working_set_mb']:.1f} MB; {images} images: "
                  f"explain {whole['working_set_mb']:.1f} MB ({ratios[0]:.2f}x), explain_iter "
                  f"{streamed['working_set_mb']:.1f} MB ({ratios[1]:.2f}x)")
    table = markdown_table(["model", "backend", f"working set, {chunk} images (MB)",
                            f"explain {images} (MB, x chunk)", f"explain_iter {images} (MB, x chunk)",
                            "result (MB)", f"peak RSS {chunk} / {images} (MB)", "input (MB)"], rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    (out / "memory.md").write_text(f"# Peak memory of explain: {images} images in chunks of {chunk}\n\n{table}\n",
                                   encoding="utf-8")
    return table
