"""Ray and DDP measured against one process (`pathrt bench --distributed`), in a network namespace
holding only `lo` (the bench re-runs itself inside one: Ray must not reach another interface).

Ray: `ray_images` digits test images (repeated) as PNG in a Parquet file, explained by
`explain_dataset` with 1 and 2 actors of 1 thread, against one in-process explainer (in a fresh
interpreter) reading and explaining the same blocks with 1 and with 2 threads (no Ray, no output
files). Reported: steady
images/s (from the first finished block to the last: past Ray's and the actors' start-up), wall
images/s with start-up, and Ray's cost per image (1 actor against the 1-thread in-process run).

DDP: `pathrt train` of the embedded generator (the demo's settings, `ddp_steps` steps) in one
process of 2 threads and in 2 DDP processes of 1 thread: seconds per step and the final validation
fidelity and sparsity of each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pathrt.artifacts import artifact_paths, write_json
from pathrt.data import load_digits
from pathrt.errors import InputError
from pathrt.report import markdown_table


def _in_process(target: Path, generator: Path, images: Path, block_size: int, threads: int) -> float:
    """Images/s of one explainer reading and explaining every block of `images` with `threads` threads."""
    from pathrt.distributed.ray_explain import list_source, read_block
    from pathrt.runtime import Explainer

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        explainer = Explainer.from_files(target, generator, num_threads=threads)
        source = list_source(images, block_size)
        shape = explainer.target.input_shape[1:]
        first = source.blocks[0]
        explainer.explain(explainer.target.preprocess(read_block("parquet", str(images), first, shape)))  # warm-up
        begin = time.perf_counter()
        for block in source.blocks:
            x = read_block("parquet", str(images), block, shape)
            explainer.explain(explainer.target.preprocess(x))
        return source.count / (time.perf_counter() - begin)
    finally:
        torch.set_num_threads(previous)


def _ray_rows(target: Path, generator: Path, tmp: Path, count: int, block_size: int) -> list[dict[str, Any]]:
    from pathrt.distributed import explain_dataset
    from pathrt.distributed.ray_explain import write_parquet_images

    images = tmp / "images.parquet"
    test = load_digits("test").images
    write_parquet_images(images, test[torch.arange(count) % len(test)], [f"img-{i}" for i in range(count)])
    # each baseline in a fresh interpreter, as a Python user's explainer runs (and as Ray's actors start:
    # the process's allocator settings, e.g. pathrt.heap's, left out of the comparison)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        one, two = (pool.submit(_in_process, target, generator, images, block_size, t).result() for t in (1, 2))
    rows = [{"run": "in-process, 1 thread", "steady": one}, {"run": "in-process, 2 threads", "steady": two}]
    for actors in (1, 2):
        summary = explain_dataset(target, generator, tmp / f"ray-{actors}", images, actors=actors, threads=1,
                                  block_size=block_size, progress=False)
        rows.append({"run": f"Ray, {actors} actor{'s' * (actors > 1)} × 1 thread",
                     "steady": summary["steady_images_per_second"], "wall": summary["images_per_second"],
                     "startup_s": summary["seconds"] - count / summary["steady_images_per_second"],
                     "busy": summary["actor_busy"], "block_ms_per_image": 1e3 * summary["actor_seconds"] / count})
    for row in rows:
        row["vs_in_process_2_threads"] = row["steady"] / two
    rows[2]["ray_ms_per_image"] = 1e3 * (1 / rows[2]["steady"] - 1 / one)
    return rows


def _ddp_rows(target: Path, tmp: Path, steps: int) -> list[dict[str, Any]]:
    from pathrt.generator import load_generator

    rows = []
    for nproc, threads in ((1, 2), (2, 1)):
        stem = tmp / f"generator-{nproc}"
        argv = [sys.executable, "-m", "pathrt.cli", "train", "--target", str(target), "--out", str(stem),
                "--steps", str(steps), "--no-progress"]
        if nproc > 1:
            argv += ["--nproc", str(nproc), "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        begin = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - begin
        if result.returncode:
            raise InputError(f"`{' '.join(argv[2:])}` failed: {result.stderr.strip()[-500:]}")
        last = load_generator(stem)[1]["info"]["history"][-1]  # "seconds": the training loop, as it timed itself
        rows.append({"run": f"{nproc} process{'es' * (nproc > 1)} × {threads} thread{'s' * (threads > 1)}",
                     "ms_per_step": 1e3 * last["seconds"] / steps, "wall_s": wall,
                     "val_fidelity": last["val_fidelity"], "val_balanced_fidelity": last["val_balanced_fidelity"],
                     "val_sparsity": last["val_sparsity"]})
    return rows


def distributed_bench(workdir: Path, out: Path, ray_images: int, ray_block_size: int, ddp_steps: int) -> str:
    """Runs both parts (see the module docstring) on the trained demo in `workdir`; writes
    `out/distributed.md` and `distributed.json`; returns the tables."""
    target, generator = workdir / "target", workdir / "generator"
    if not (artifact_paths(target)[1].exists() and artifact_paths(generator)[1].exists()):
        raise InputError(f"no trained demo in {workdir}: run `make demo` first (the bench trains and explains it)")
    with tempfile.TemporaryDirectory(prefix="pathrt-distributed-bench-") as name:
        tmp = Path(name)
        ray = _ray_rows(target, generator, tmp, ray_images, ray_block_size)
        ddp = _ddp_rows(target, tmp, ddp_steps) if ddp_steps else []

    def fmt(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    tables = markdown_table(
        ["run", "images/s (steady)", "images/s (with start-up)", "start-up s", "× in-process 2 threads",
         "actor ms/image in blocks", "actors busy", "Ray ms/image"],
        [[r["run"], fmt(r["steady"], ".0f"), fmt(r.get("wall"), ".0f"), fmt(r.get("startup_s"), ".1f"),
          fmt(r["vs_in_process_2_threads"], ".2f"), fmt(r.get("block_ms_per_image"), ".3f"),
          fmt(r.get("busy"), ".0%"), fmt(r.get("ray_ms_per_image"), ".3f")] for r in ray])
    if ddp:
        tables += "\n\n" + markdown_table(
            ["training", "ms/step", "wall s", "val fidelity %", "balanced %", "val sparsity %"],
            [[r["run"], f"{r['ms_per_step']:.1f}", f"{r['wall_s']:.0f}", f"{r['val_fidelity']:.1f}",
              f"{r['val_balanced_fidelity']:.1f}", f"{100 * r['val_sparsity']:.1f}"] for r in ddp])
    text = (f"# pathrt bench --distributed\n\nRay: {ray_images} images in blocks of {ray_block_size}; DDP: "
            f"{ddp_steps} steps, global batch 64.\n\n{tables}\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.md").write_text(text, encoding="utf-8")
    write_json(out / "distributed.json", {"ray": ray, "ddp": ddp, "ray_images": ray_images,
                                          "ray_block_size": ray_block_size, "ddp_steps": ddp_steps})
    return tables

