"""Load time of the deployable files and what their integrity checks cost (`pathrt bench --load`).

For each model, a bundle and an ONNX explainer are written to a temporary folder and each loaded
`repeats` times: the C++ `ExplainSession` (bundle reader, plan checks, the SHA-256 of its tensors,
a dry run) and `pathrt.export.load_onnx` (protobuf parse, checker, the digest of every tensor, the
ONNX Runtime session). Both loaders time their digest check themselves (`digest_ms` of the session
and of the loaded file), so "without the check" is the same load minus that part, measured in the
same call. Medians; the file read is outside both figures.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pathrt.benchmarks.harness import build_models
from pathrt.report import markdown_table

HEADERS = ["model", "file", "MB", "load with digest (ms)", "without (ms)", "digest (ms)", "digest share"]


def _median_times(load: Callable[..., Any], data: bytes, target: Any, repeats: int) -> tuple[float, float]:
    """Median (load_ms, digest_ms) of `load(data)` (`target=` for the ONNX loader)."""
    loaded = [load(data, target=target) if target is not None else load(data) for _ in range(repeats)]
    return statistics.median(x.load_ms for x in loaded), statistics.median(x.digest_ms for x in loaded)


def load_bench(names: Sequence[str], workdir: Path, out: Path, repeats: int = 5) -> str:
    """Times both loaders on every model; writes `out/load.md` and `load.json`; returns the table."""
    from pathrt.export import export_explainer, load_onnx
    from pathrt.kernels import native as extension
    from pathrt.runtime.bundle import write_bundle

    if extension.EXTENSION is None:
        raise RuntimeError(f"the bundle loader needs pathrt._C ({extension.EXTENSION_ERROR})")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pathrt-load-") as tmp:
        for model in build_models(names, workdir, 0.6, 8):
            target, generator = model.explainer.target, model.explainer.generator
            bundle = write_bundle(target, generator, Path(tmp) / "model.bundle")
            onnx_file = Path(tmp) / "explainer.onnx"
            export_explainer(target, generator, onnx_file, verify=False)
            loaders = (("bundle (C++ session)", bundle, extension.EXTENSION.ExplainSession.from_bytes, None),
                       ("ONNX explainer", onnx_file, load_onnx, target))
            for kind, path, load, for_target in loaders:
                data = path.read_bytes()
                total, digest = _median_times(load, data, for_target, repeats)
                rows.append({"model": model.name, "file": kind, "mb": len(data) / 1e6, "load_ms": total,
                             "without_ms": total - digest, "digest_ms": digest, "share": digest / total})
            print(f"  {model.name}: " + ", ".join(f"{r['file']} {r['load_ms']:.0f} ms (digest {r['digest_ms']:.0f})"
                                                  for r in rows[-2:]), flush=True)
    table = markdown_table(HEADERS, [[r["model"], r["file"], f"{r['mb']:.1f}", f"{r['load_ms']:.0f}",
                                      f"{r['without_ms']:.0f}", f"{r['digest_ms']:.0f}", f"{r['share']:.0%}"]
                                     for r in rows])
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.md").write_text(f"# Load time with integrity checks (median of {repeats})\n\n{table}\n",
                                 encoding="utf-8")
    (out / "load.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return table
