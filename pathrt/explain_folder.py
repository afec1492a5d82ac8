"""`pathrt explain`: explain a folder of images (or the embedded test split) and write the results.

Writes into the output folder: `explanations.safetensors/.json` (the Explanation), `summary.md` and
`summary.json` (one row per image: class, Y, O, sparsity, pathway prediction; plus the SPEC §5
metrics of the whole set, with accuracies when labels are known).

Images are read and explained one chunk (`batch_size` images) at a time, so memory stays bounded
by a chunk however large the folder; each finished chunk is saved atomically under `parts/`, next
to a manifest naming every image, the chunk size and the models. A run that was interrupted (killed,
out of disk) and is started again with the same images and models explains only the chunks not yet
saved; the final files are assembled from the parts in image order, then the parts are removed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pathrt.artifacts import atomic_write, parse_json, tensor_fingerprint, write_json
from pathrt.data import list_image_files, load_digits, read_images
from pathrt.errors import ArtifactError
from pathrt.metrics import summarize
from pathrt.progress import progress_bar
from pathrt.report import markdown_table
from pathrt.runtime.explainer import Explainer
from pathrt.runtime.explanation import Explanation

MANIFEST = "manifest.json"


def _finished_parts(parts: Path, manifest: dict[str, Any], chunks: int) -> set[int]:
    """The chunks an earlier run with the same manifest saved completely (others are redone)."""
    try:
        previous = parse_json((parts / MANIFEST).read_bytes(), str(parts / MANIFEST))
    except (OSError, ArtifactError):
        previous = None
    if previous != manifest:
        shutil.rmtree(parts, ignore_errors=True)
        return set()
    done = set()
    for i in range(chunks):
        try:
            if len(Explanation.load(parts / f"part-{i:06d}")) == len(manifest["chunks"][i]):
                done.add(i)
        except ArtifactError:
            pass  # missing or unreadable: explained again
    return done


def explain_to_folder(target_path: str | os.PathLike[str], generator_path: str | os.PathLike[str],
                      out: str | os.PathLike[str], images: str | os.PathLike[str] | None = None,
                      batch_size: int = 256, backend: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Explains `images` (a folder) or the digits test split chunk by chunk, resuming an interrupted
    run in `out`; returns the summary written to `out`."""
    explainer = Explainer.from_files(target_path, generator_path, max_batch_size=batch_size, backend=backend)
    target = explainer.target
    labels = None
    if images is None:
        test = load_digits("test")
        names, labels = [f"digits-test/{i}" for i in range(len(test))], test.labels

        def read(rows: slice) -> torch.Tensor:
            return test.images[rows]
    else:
        paths = list_image_files(images)
        names = [str(p.relative_to(images)) for p in paths]

        def read(rows: slice) -> torch.Tensor:
            return read_images(paths[rows], target.input_shape[1:])
    bounds = [slice(s, min(s + batch_size, len(names))) for s in range(0, len(names), batch_size)]
    folder = Path(out)
    parts = folder / "parts"
    manifest = {"chunks": [names[rows] for rows in bounds], "target": target.fingerprint,
                "generator": tensor_fingerprint(explainer.generator.state_dict())}
    done = _finished_parts(parts, manifest, len(bounds))
    if done:
        print(f"resuming: {len(done)} of {len(bounds)} chunks were explained by an earlier run")
    write_json(parts / MANIFEST, manifest)
    bar = progress_bar(len(names), "explain", progress, unit="image")
    for i, rows in enumerate(bounds):
        if i not in done:
            explainer.explain(target.preprocess(read(rows))).save(parts / f"part-{i:06d}")
        bar.update(rows.stop - rows.start)
    bar.close()
    explanation = Explanation.assemble((Explanation.load(parts / f"part-{i:06d}") for i in range(len(bounds))),
                                       len(names))
    summary = write_outputs(folder, explanation, names, labels, target.classes)
    shutil.rmtree(parts)
    return summary


def write_outputs(folder: Path, explanation: Explanation, names: list[str], labels: torch.Tensor | None,
                  classes: Sequence[str]) -> dict[str, Any]:
    """explanations.*, summary.md and summary.json of `pathrt explain` (and `pathrt request`) into `folder`."""
    explanation.save(folder / "explanations")
    metrics = summarize(explanation, labels) if len(explanation) > 1 else {}
    rows = [[name, classes[int(c)], classes[int(p)], f"{float(y):.3f}", f"{float(o):.3f}", f"{100 * float(s):.1f}"]
            for name, c, p, y, o, s in zip(names, explanation.classes, explanation.pathway_logits.argmax(1),
                                           explanation.Y, explanation.O, explanation.sparsity, strict=True)]
    table = markdown_table(["image", "class", "pathway prediction", "Y", "O", "sparsity %"], rows)
    overview = markdown_table(["metric", "value"], [[k, f"{v:.2f}"] for k, v in metrics.items()
                                                    if isinstance(v, float)])
    backend = f"backend {explanation.backend} ({explanation.backend_reason})"
    text = f"# pathrt explain\n\n{len(explanation)} images, {backend}\n\n{overview}\n\n{table}\n"
    atomic_write(folder / "summary.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    summary = {"images": names, "metrics": metrics}
    write_json(folder / "summary.json", summary)
    print(overview)
    print(f"explained {len(explanation)} images; wrote {folder / 'summary.md'} and {folder / 'explanations'}.*")
    return summary
