"""`pathrt explain --engine ray`: batch explanation of an image folder or a Parquet data set on Ray Data.

The images are cut, in a fixed order, into blocks of `block_size`; Ray Data maps the blocks over an
actor pool (`actors` actors of `threads` threads, each loading the explainer once, backend `auto`
by default: the fastest here) and each actor writes every block it explains as
`<out>/blocks/block-NNNNNN.parquet`, atomically (a temporary file renamed). So:

* a rerun into the same folder with the same images and models explains only the blocks not there
  (an interrupted run resumes; a block file that is torn or names other images is explained again);
* an actor that dies mid-block (killed, out of memory) is restarted by Ray and the block retried (Ray
  Data's defaults for actor pools: restarts and retries without limit): the retry writes the same
  file, so nothing is lost or doubled. An error raised while explaining (an unreadable image) is not
  retried: the run stops with it, keeping the finished blocks.

Each block file holds one row per image: `id`, `class` (the explained class), `packed` (the masks,
`pathrt::pack_masks` bytes), `kept` (kept neurons per layer), `logits`, `pathway_logits`, `Y`, `O`;
its schema metadata `pathrt` holds the pathway spec (`read_results` reads them all back in order).
`<out>/summary.json` has fidelity, sparsity and throughput; `<out>/manifest.json` what was run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathrt.artifacts import atomic_write, parse_json, tensor_fingerprint, write_json
from pathrt.data import decode_images, list_image_files, load_digits, read_images
from pathrt.errors import (
    ArtifactError,
    DatasetError,
    DistributedError,
    IncompatibleArtifactError,
    InputError,
    PathrtError,
)
from pathrt.fidelity import fidelity, fidelity_breakdown
from pathrt.generator import load_generator
from pathrt.metrics import ic_rate, mdc, mic
from pathrt.progress import progress_bar
from pathrt.runtime.explainer import Explainer
from pathrt.runtime.explanation import Explanation
from pathrt.targets import load_target
from pathrt.targets.spec import PathwaySpec
from pathrt.threads import worker_wait_policy

MANIFEST_FORMAT = "pathrt.ray_explain"
DIGITS = "digits-test"
IMAGE_COLUMN = "image"
ID_COLUMN = "id"


@dataclass(frozen=True)
class Block:
    """Images `ids` of one block: rows [start, stop) of `file` (a Parquet file, or the digits test
    split when `file` is empty and the source is the digits); image-folder ids are the relative paths."""

    index: int
    ids: list[str]
    file: str = ""
    start: int = 0
    stop: int = 0


@dataclass(frozen=True)
class Source:
    """What `explain_dataset` reads: kind "digits", "folder" or "parquet", its root and its blocks."""

    kind: str
    root: str
    blocks: list[Block]

    @property
    def count(self) -> int:
        return sum(len(b.ids) for b in self.blocks)


def _parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.parquet") if p.is_file() and not p.name.startswith("."))


def is_parquet(path: str | os.PathLike[str]) -> bool:
    """A `.parquet` file, or a folder whose files are all `.parquet` (a Parquet data set)."""
    root = Path(path)
    if root.is_file():
        return root.suffix == ".parquet"
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")] if root.is_dir() else []
    return bool(files) and all(p.suffix == ".parquet" for p in files)


def list_source(images: str | os.PathLike[str] | None, block_size: int) -> Source:
    """The blocks of `images`: None (the digits test split), an image folder, or Parquet (a file or a
    folder of files with an `image` column of encoded images and, optionally, an `id` column)."""
    if block_size < 1:
        raise InputError(f"block_size must be >= 1, got {block_size}")

    def cut(ids: list[str], file: str = "", offset: int = 0) -> Iterator[tuple[list[str], str, int, int]]:
        for s in range(0, len(ids), block_size):
            yield ids[s:s + block_size], file, offset + s, offset + min(s + block_size, len(ids))

    if images is None:
        pieces = list(cut([f"{DIGITS}/{i}" for i in range(len(load_digits("test")))]))
        kind, root = "digits", DIGITS
    elif is_parquet(images):
        import pyarrow.parquet as pq

        base = Path(images)
        pieces = []
        for path in _parquet_files(base):
            name = str(path.relative_to(base)) if base.is_dir() else path.name
            try:
                schema = pq.read_schema(path)
                rows = pq.ParquetFile(path).metadata.num_rows
                ids = ([str(v) for v in pq.read_table(path, columns=[ID_COLUMN]).column(0).to_pylist()]
                       if ID_COLUMN in schema.names else [f"{name}#{r}" for r in range(rows)])
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise DatasetError(f"{path} is not a readable Parquet file ({exc})") from exc
            if IMAGE_COLUMN not in schema.names:
                raise DatasetError(f"{path} has no {IMAGE_COLUMN!r} column (its columns: {schema.names}); pathrt "
                                   f"reads encoded images (PNG, JPEG bytes) from {IMAGE_COLUMN!r}")
            pieces += cut(ids, name)
        kind, root = "parquet", str(base.resolve())
    else:
        base = Path(images)
        pieces = list(cut([str(p.relative_to(base)) for p in list_image_files(base)]))
        kind, root = "folder", str(base.resolve())
    blocks = [Block(i, ids, file, start, stop) for i, (ids, file, start, stop) in enumerate(pieces)]
    if not blocks:
        raise DatasetError(f"{images} holds no images")
    seen: set[str] = set()
    for block in blocks:
        duplicate = next((i for i in block.ids if i in seen), None)
        if duplicate is not None:
            raise DatasetError(f"image id {duplicate!r} occurs twice in {images}; ids must be unique")
        seen.update(block.ids)
    return Source(kind, root, blocks)


def read_block(source_kind: str, root: str, block: Block, size: tuple[int, int]) -> torch.Tensor:
    """The images of one block of a `Source` of `source_kind` at `root`, (N, 3, H, W) in [0, 1]."""
    if source_kind == "digits":
        return _digits_test().images[block.start:block.stop]
    if source_kind == "folder":
        return read_images([Path(root) / i for i in block.ids], size)
    import pyarrow.parquet as pq

    path = Path(root) / block.file if Path(root).is_dir() else Path(root)
    reader = pq.ParquetFile(path)
    groups, first, offset = [], None, 0
    for g in range(reader.metadata.num_row_groups):  # only the row groups that hold [start, stop)
        rows = reader.metadata.row_group(g).num_rows
        if offset < block.stop and offset + rows > block.start:
            groups.append(g)
            first = offset if first is None else first
        offset += rows
    column = reader.read_row_groups(groups, columns=[IMAGE_COLUMN]).column(0)
    values = column.slice(block.start - (first or 0), block.stop - block.start).to_pylist()
    encoded = [v["bytes"] if isinstance(v, dict) else v for v in values]  # Hugging Face's Image: {bytes, path}
    if any(not isinstance(v, bytes) for v in encoded):
        raise DatasetError(f"{path}: column {IMAGE_COLUMN!r} must hold encoded images (bytes), found "
                           f"{type(next(v for v in encoded if not isinstance(v, bytes))).__name__}")
    return decode_images(encoded, block.ids, size)


@functools.cache
def _digits_test() -> Any:
    return load_digits("test")


def write_parquet_images(path: str | os.PathLike[str], images: torch.Tensor, ids: Sequence[str] | None = None,
                         row_group_size: int = 256) -> None:
    """`images` (N, 3, H, W) in [0, 1] as the Parquet `explain_dataset` reads: PNG bytes in column `image`
    (8 bits per channel) and, given `ids`, an `id` column; written atomically."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    columns = {IMAGE_COLUMN: pa.array(encoded, type=pa.binary())}
    if ids is not None:
        columns[ID_COLUMN] = pa.array(list(ids), type=pa.string())
    table = pa.table(columns)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size))


def block_table(explanation: Explanation, ids: Sequence[str]) -> Any:
    """One block's results as a pyarrow Table (the columns of the module docstring)."""
    import pyarrow as pa

    def rows_of(matrix: torch.Tensor, kind: Any) -> Any:
        array = np.ascontiguousarray(matrix.numpy())
        return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1), type=kind), array.shape[1])

    kept = torch.stack([m.sum(1) for m in explanation.layer_masks], 1).to(torch.int32)
    packed = [bytes(row) for row in explanation.packed.numpy()]
    columns = {
        "id": pa.array(list(ids), type=pa.string()),
        "class": pa.array(explanation.classes.numpy()),
        "packed": pa.array(packed, type=pa.binary(explanation.packed.shape[1])),
        "kept": rows_of(kept, pa.int32()),
        "logits": rows_of(explanation.logits.float(), pa.float32()),
        "pathway_logits": rows_of(explanation.pathway_logits.float(), pa.float32()),
        "Y": pa.array(explanation.Y.numpy()),
        "O": pa.array(explanation.O.numpy()),
    }
    meta = {"pathway_spec": explanation.spec.to_dict(), "backend": explanation.backend}
    return pa.table(columns, metadata={"pathrt": json.dumps(meta)})


class ExplainBlocks:
    """The Ray Data actor: loads the explainer once, then explains and writes one block per call."""

    def __init__(self, target: str, generator: str, backend: str, threads: int, out: str, kind: str,
                 root: str) -> None:
        torch.set_num_threads(threads)
        self.explainer = Explainer.from_files(target, generator, backend=backend, num_threads=threads)
        self.out, self.kind, self.root = Path(out), kind, root

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        done: dict[str, list[Any]] = {"block": [], "images": [], "seconds": [], "begin": [], "pid": [], "error": []}
        for row in range(len(batch["index"])):
            block = Block(int(batch["index"][row]), [str(i) for i in batch["ids"][row]], str(batch["file"][row]),
                          int(batch["start"][row]), int(batch["stop"][row]))
            begin, started = time.perf_counter(), time.time()
            target = self.explainer.target
            error, count = "", 0
            try:
                images = read_block(self.kind, self.root, block, target.input_shape[1:])
                table = block_table(self.explainer.explain(target.preprocess(images)), block.ids)
                atomic_write(block_path(self.out, block.index), lambda tmp, t=table: pq.write_table(t, tmp))
                count = len(images)
            except PathrtError as exc:  # the user's error (an unreadable image, a full disk): sent back whole
                error = f"{type(exc).__name__}\t{exc}"
            for key, value in (("block", block.index), ("images", count),
                               ("seconds", time.perf_counter() - begin), ("begin", started), ("pid", os.getpid()),
                               ("error", error)):
                done[key].append(value)
        return {k: np.asarray(v) for k, v in done.items()}


def block_path(out: Path, index: int) -> Path:
    return out / "blocks" / f"block-{index:06d}.parquet"


def _finished(out: Path, block: Block) -> bool:
    """Whether `block`'s file exists, is readable and holds exactly its images."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(block_path(out, block.index), columns=["id"]).column(0).to_pylist() == block.ids
    except (OSError, ValueError):
        return False


def _manifest(source: Source, block_size: int, target_path: str, generator_path: str) -> dict[str, Any]:
    target = load_target(target_path)
    generator, _ = load_generator(generator_path, target_fingerprint=target.fingerprint, spec=target.spec)
    ids = hashlib.sha256("\n".join(i for b in source.blocks for i in b.ids).encode()).hexdigest()
    return {"format": MANIFEST_FORMAT, "source": source.kind, "root": source.root, "images": source.count,
            "ids_sha256": ids, "block_size": block_size, "blocks": len(source.blocks),
            "target": target.fingerprint, "generator": tensor_fingerprint(generator.state_dict()),
            "pathway_spec": target.spec.to_dict(), "classes": list(target.classes)}


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Refuses an output folder holding another run's results (other images, block size or models)."""
    path = out / "manifest.json"
    if not path.exists():
        if (out / "blocks").exists():
            raise IncompatibleArtifactError(f"{out / 'blocks'} exists without {path}; choose another --out")
        return
    try:
        previous = parse_json(path.read_bytes(), str(path))
    except (OSError, ArtifactError) as exc:
        raise ArtifactError(f"{path} is unreadable ({exc}); delete {out} or choose another --out") from exc
    differs = sorted(k for k in manifest if previous.get(k) != manifest[k])
    if differs:
        raise IncompatibleArtifactError(f"{out} holds the results of another run (its {', '.join(differs)} "
                                        f"differ); explain into another --out, or delete {out} to start afresh")


def explain_dataset(target: str | os.PathLike[str], generator: str | os.PathLike[str],
                    out: str | os.PathLike[str], images: str | os.PathLike[str] | None = None, *,
                    actors: int = 1, threads: int = 1, block_size: int = 256, backend: str = "auto",
                    address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Explains `images` (an image folder, Parquet, or None: the digits test split) on Ray with `actors`
    actors of `threads` threads into `out` (see the module docstring), resuming an earlier run there.
    Connects to the cluster at `address` (e.g. "auto", "ray://head:10001"), or starts a local one when
    None and none is running. Returns the summary (also written to `out/summary.json`)."""
    if actors < 1 or threads < 1:
        raise InputError(f"actors and threads must be >= 1, got actors={actors}, threads={threads}")
    try:
        import ray
    except ImportError as exc:
        raise DistributedError(f"Ray is not installed ({exc}); pip install 'pathrt[ray]'") from exc
    folder = Path(out)
    source = list_source(images, block_size)
    manifest = _manifest(source, block_size, str(target), str(generator))
    _check_manifest(folder, manifest)
    write_json(folder / "manifest.json", manifest)
    pending = [b for b in source.blocks if not _finished(folder, b)]
    skipped = len(source.blocks) - len(pending)
    if skipped:
        print(f"resuming: {skipped} of {len(source.blocks)} blocks were explained by an earlier run")
    started = bool(pending) and not ray.is_initialized()  # all blocks done: no cluster needed
    if started:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    seconds = 0.0
    runs: list[dict[str, Any]] = []
    try:
        cpus = ray.cluster_resources().get("CPU", 0) if pending else 0
        if pending and actors * threads > cpus:
            raise InputError(f"{actors} actors × {threads} threads need {actors * threads} CPUs; the Ray cluster has "
                             f"{cpus:g}: lower --actors or --threads (or add nodes)")
        ray.data.DataContext.get_current().enable_progress_bars = False
        bar = progress_bar(sum(len(b.ids) for b in pending), "explain (ray)", progress, unit="image")
        begin = time.perf_counter()
        if pending:
            dataset = ray.data.from_items([asdict(b) for b in pending], override_num_blocks=len(pending)).map_batches(
                ExplainBlocks, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
                fn_constructor_kwargs={"target": str(target), "generator": str(generator), "backend": backend,
                                       "threads": threads, "out": str(folder.resolve()), "kind": source.kind,
                                       "root": source.root},
                runtime_env={"env_vars": worker_wait_policy()})
            try:
                for row in dataset.iter_rows():
                    if row["error"]:
                        _raise(str(row["error"]), int(row["block"]), len(runs), folder)
                    runs.append({k: row[k].item() if hasattr(row[k], "item") else row[k] for k in row})
                    bar.update(int(row["images"]))
            except ray.exceptions.RayError as exc:
                raise DistributedError(f"the Ray run failed: {_root_cause(exc)}; the {len(runs)} blocks "
                                       f"finished are kept in {folder / 'blocks'}: run again to resume") from exc
        seconds = time.perf_counter() - begin
        bar.close()
    finally:
        if started:
            ray.shutdown()
    missing = [b.index for b in source.blocks if not _finished(folder, b)]
    if missing:
        raise DistributedError(f"{len(missing)} blocks have no results after the run (e.g. {missing[:5]}); run "
                               "again to explain them")
    explained = sum(r["images"] for r in runs)
    # steady state: from the first block's start in an actor to the last one's end (past Ray's and the
    # actors' start-up; wall clocks, so on a cluster as good as the nodes' clock sync); busy: the share of
    # that window the actors spent in blocks (reading, explaining, writing), the rest is Ray's
    window = max((r["begin"] + r["seconds"] for r in runs), default=0.0) - min((r["begin"] for r in runs), default=0.0)
    steady = explained / window if window > 0 else None
    summary = {"images": source.count, "blocks": len(source.blocks), "blocks_skipped": skipped,
               "actors": actors, "threads_per_actor": threads, "backend": backend,
               "explained_images": explained, "seconds": round(seconds, 3),
               "images_per_second": round(explained / seconds, 2) if explained and seconds else None,
               "steady_images_per_second": round(steady, 2) if steady else None,
               "actor_seconds": round(sum(r["seconds"] for r in runs), 3),
               "actor_busy": round(sum(r["seconds"] for r in runs) / (window * actors), 3) if window > 0 else None,
               "actor_processes": len({r["pid"] for r in runs}),
               **_metrics(read_results(folder), PathwaySpec.from_dict(manifest["pathway_spec"]))}
    write_json(folder / "summary.json", summary)
    print(f"explained {explained} images ({skipped} blocks from an earlier run) in {seconds:.1f} s on {actors} "
          f"actors; fidelity {summary['fidelity']:.2f}%, sparsity {100 * summary['sparsity']['mean']:.1f}%; "
          f"wrote {folder / 'blocks'} and {folder / 'summary.json'}")
    return summary


def _raise(error: str, block: int, finished: int, folder: Path) -> None:
    """Raises, in the driver, the pathrt error an actor met explaining `block`."""
    import pathrt.errors

    name, message = error.split("\t", 1)
    cls = getattr(pathrt.errors, name, DistributedError)
    raise cls(f"{message} (block {block}; the {finished} blocks finished are kept in {folder / 'blocks'}: fix it "
              "and run again to resume)")


def _root_cause(exc: BaseException) -> str:
    """The line of Ray's error text that names the original exception ("KeyError: ...": Ray wraps it in
    a traceback and its own advice), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return (named or lines or [type(exc).__name__])[-1 if named else 0]


def _metrics(table: Any, spec: PathwaySpec) -> dict[str, Any]:
    """Fidelity, sparsity (overall and per layer) and the confidence metrics of all results."""
    logits = torch.from_numpy(np.stack(table.column("logits").to_numpy(zero_copy_only=False)))
    pathway = torch.from_numpy(np.stack(table.column("pathway_logits").to_numpy(zero_copy_only=False)))
    kept = torch.from_numpy(np.stack(table.column("kept").to_numpy(zero_copy_only=False))).double()
    y = torch.from_numpy(table.column("Y").to_numpy())
    o = torch.from_numpy(table.column("O").to_numpy())
    per_sample = 1 - kept.sum(1) / spec.total_channels
    return {"fidelity": fidelity(logits, pathway),
            "balanced_fidelity": fidelity_breakdown(logits, pathway)["balanced_fidelity"],
            "sparsity": {"mean": float(per_sample.mean()), "std": float(per_sample.std()) if len(y) > 1 else 0.0,
                         "per_layer": {layer.name: float(1 - kept[:, i].mean() / layer.channels)
                                       for i, layer in enumerate(spec.layers)}},
            "mIC": mic(y, o), "mDC": mdc(y, o), "ic_rate": ic_rate(y, o)}


def read_results(out: str | os.PathLike[str]) -> Any:
    """Every block's results of an `explain_dataset` run in `out`, in image order (a pyarrow Table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out)
    path = folder / "manifest.json"
    if not path.exists():
        raise ArtifactError(f"{folder} holds no `pathrt explain --engine ray` results (no manifest.json)")
    manifest = parse_json(path.read_bytes(), str(path))
    files = [block_path(folder, i) for i in range(int(manifest["blocks"]))]
    absent = [str(f) for f in files if not f.exists()]
    if absent:
        raise ArtifactError(f"{len(absent)} block files are missing (e.g. {absent[0]}); run the explain again")
    return pa.concat_tables(pq.read_table(f) for f in files)
