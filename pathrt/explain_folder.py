"""`pathrt explain`: explain a folder of images (or the embedded test split) and write the results.

Writes into the output folder: `explanations.safetensors/.json` (the Explanation), `summary.md` and
`summary.json` (one row per image: class, Y, O, sparsity, pathway prediction; plus the SPEC §5
metrics of the whole set, with accuracies when labels are known).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pathrt.artifacts import atomic_write, write_json
from pathrt.data import load_digits, load_image_files
from pathrt.metrics import summarize
from pathrt.report import markdown_table
from pathrt.runtime.explainer import Explainer


def explain_to_folder(target_path: str | os.PathLike[str], generator_path: str | os.PathLike[str],
                      out: str | os.PathLike[str], images: str | os.PathLike[str] | None = None,
                      batch_size: int = 256, backend: str = "auto") -> dict[str, Any]:
    """Explains `images` (a folder) or the digits test split; returns the summary written to `out`."""
    explainer = Explainer.from_files(target_path, generator_path, max_batch_size=batch_size, backend=backend)
    target = explainer.target
    labels = None
    if images is None:
        test = load_digits("test")
        raw, names, labels = test.images, [f"digits-test/{i}" for i in range(len(test))], test.labels
    else:
        raw, paths = load_image_files(images, target.input_shape[1:])
        names = [str(p.relative_to(images)) for p in paths]
    explanation = explainer.explain(target.preprocess(raw))
    folder = Path(out)
    explanation.save(folder / "explanations")
    metrics = summarize(explanation, labels) if len(explanation) > 1 else {}
    rows = [[name, target.classes[int(c)], target.classes[int(p)], f"{float(y):.3f}", f"{float(o):.3f}",
             f"{100 * float(s):.1f}"]
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


