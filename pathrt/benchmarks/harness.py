"""`pathrt bench`: times every path of `benchmarks.paths` on every model and batch size in one run.

Each (model, path, batch) row: warm-up calls, then timed calls (at least `repeats` and 3, more while
the row's time budget lasts: a fast row's median then comes from hundreds of calls, not the first few),
reported as the median with 20/80 quantiles. Costs are given in units of the fastest plain
pass of the same model and batch on this machine (eager, ONNX Runtime or torch.compile with
freezing, whichever was fastest in the same run: "× fastest plain"), of eager's plain pass, as
speedups against the eager explain path, and as a fraction of this machine's measured float32
matmul FLOP/s, using FlopCounterMode's count of one call. Before timing, each model's per-phase
cost (plain pass, generator, pathway pass) is predicted from FLOPs and op counts
(`predict_phases`); the session's measured phases are held to it afterwards.
Writes bench.md, bench.csv, bench.json and bench.png.
"""

from __future__ import annotations

import contextlib
import csv
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from pathrt.artifacts import artifact_paths, write_json
from pathrt.benchmarks.paths import PATHS, PLAIN_PATHS, TIMED_ALONE, BenchModel
from pathrt.data import load_digits
from pathrt.flops import count_flops
from pathrt.generator import GeneratorConfig, PathwayGenerator, load_generator
from pathrt.report import markdown_table
from pathrt.runtime import Explainer
from pathrt.targets import capture_features, create_target, load_target, pathway_forward, seeded
from pathrt.threads import describe_wait_policy
from pathrt.version import __version__

DENSE_EQUIVALENT = ("eager+compile", "native", "native-cuda", "triton", "onnxruntime", "auto", "auto+contention",
                    "session-2x1thread")
MISS = 0.2  # a measured phase further than this from its prediction is reported as a miss
ROUNDS = 5  # a model's paths at one batch are timed in turn, this many rounds (time_interleaved)


@dataclass
class Row:
    """One measured (model, path, batch)."""

    model: str
    path: str
    batch: int
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int
    flops: float
    images: int = 0  # explained per call (batch, or more for concurrent paths)
    fastest_plain: str = ""  # the plain path of the unit
    fastest_plain_passes: float = float("nan")
    plain_passes: float = float("nan")
    speedup_vs_eager: float = float("nan")
    gflops_per_s: float = float("nan")
    fraction_of_matmul_peak: float = float("nan")


def device_name() -> str:
    """CPU model name and core count (or the CUDA device), for every CSV row."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def matmul_flops_per_second(n: int = 2048, windows: int = 3, seconds: float = 0.5) -> float:
    """This machine's float32 matmul throughput (FLOP/s): the best of a few timed windows of n×n
    matmuls. Rows report their nominal FLOPs against it; above 100% means the library did fewer
    FLOPs than the nominal count (e.g. Winograd convolutions)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def generator_with_sparsity(spec, sparsity: float, seed: int = 0) -> PathwayGenerator:
    """A random generator (weights from `seed`) whose head biases (±3) keep a fixed random (1 − sparsity)
    of the neurons.

    For cost measurements on models without a trained generator: quality is not measured.
    """
    with seeded(seed):
        generator = PathwayGenerator(spec, GeneratorConfig.small()).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in generator.rpd.heads:
            keep = torch.rand(head[-1].bias.shape, generator=g) >= sparsity
            head[-1].bias.copy_(torch.where(keep, 3.0, -3.0))
    return generator


def build_models(names: Sequence[str], workdir: Path, sparsity: float, dgr_max_batch: int) -> list[BenchModel]:
    """The embedded model (trained demo artifacts when `workdir` has them) and torchvision models at 64x64."""
    models = []
    for name in names:
        if name == "embedded":
            stem_t, stem_g = workdir / "target", workdir / "generator"
            images = None
            if artifact_paths(stem_t)[1].exists() and artifact_paths(stem_g)[1].exists():
                target = load_target(stem_t)
                generator, _ = load_generator(stem_g, target_fingerprint=target.fingerprint, spec=target.spec)
                images = target.preprocess(load_digits("test").images)
                note = (f"trained small VGG and generator from {workdir}, on the digits test images (the generator's "
                        "operating point)")
            else:
                with seeded(0):
                    target = create_target("small_vgg", 10, (3, 32, 32))
                generator = generator_with_sparsity(target.spec, sparsity)
                note = (f"random small VGG and a generator biased to {sparsity:.0%} sparsity "
                        f"(no trained demo in {workdir}: run `make demo` for the real one); cost only")
            models.append(BenchModel(name, Explainer(target, generator, backend="eager"), note, max(dgr_max_batch, 64),
                                     images))
        else:
            with seeded(0):
                target = create_target(name, 1000, (3, 64, 64))
            generator = generator_with_sparsity(target.spec, sparsity)
            models.append(BenchModel(f"{name}@64", Explainer(target, generator, backend="eager"),
                                     f"random weights (seeded), generator biased to {sparsity:.0%} sparsity: cost, "
                                     "not quality",
                                     dgr_max_batch))
    return models


def sparse_prediction(model: BenchModel) -> dict[str, Any]:
    """Count before measuring: the native pathway pass's predicted FLOPs per image at the sparsity the
    generator gives on the bench inputs (each conv after layer 1 × kept(in) × kept(out))."""
    native = model.backend("native")
    if isinstance(native, str):
        return {}
    runner = native.engine.runner  # type: ignore[attr-defined]  (the native backend's PlanRunner)
    with torch.no_grad():
        masks = native.explain(model.inputs(64)).layer_masks
    kept = [float(m.float().mean()) for m in masks]
    return {"kept_per_layer": kept, "pathway_native_predicted": runner.pathway_flops(kept),
            "pathway_native_dense": runner.pathway_flops([1.0] * len(kept))}


def op_seconds(calls: int = 3000) -> float:
    """The fixed cost of one small tensor op on this machine (dispatch, allocation, a parallel
    region's start): the median over windows of a small in-place add. The per-op term of
    `predict_phases`."""
    x = torch.zeros(256)
    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            x.add_(1.0)
        best.append((time.perf_counter() - start) / calls)
    return statistics.median(best)


def predict_phases(model: BenchModel, flops: dict[str, Any], batch: int, rate: float,
                   op_cost: float) -> dict[str, float]:
    """Predicted seconds of the session's three phases for one batch: FLOPs at this machine's matmul
    rate plus a fixed cost per op (`op_seconds`). The plain pass runs one op per plan step; the
    generator one per stem conv, shared-conv group, GEMM and fused loop of its encoder and decoder;
    the pathway pass one per step after layer 1 plus the mask statistics of each masked conv (2), at
    the FLOPs the channel-sparse kernels do at the measured layer sparsity. The session's joint tail
    (its last steps, run once for both passes) moves from the plain phase to the pathway phase."""
    native = model.backend("native")
    runner = native.engine.runner if not isinstance(native, str) else None  # type: ignore[attr-defined]
    generator = model.explainer.generator
    layers = len(model.explainer.spec.layers)
    depth = generator.config.depth
    plain_ops = len(runner.plan.steps) if runner else layers * 3
    generator_ops = 2 * layers + max(generator.rfe.repeats, default=0) + 2 + 8 * depth + 2 + 4 * layers
    pathway_steps = list(runner.plan.steps[runner.resume:]) if runner else []
    pathway_ops = len(pathway_steps) + 2 * sum(s.op == "conv2d" for s in pathway_steps)
    pathway_flops = flops.get("pathway_native_predicted", flops["pathway"])
    session = model.backend("session")
    tail = session.engine.session.joint_tail_steps if runner and not isinstance(session, str) else 0  # type: ignore[attr-defined]
    if tail:  # the session's plan is the runner's without the steps folded into a linear
        kept_steps = [i for i in range(len(runner.plan.steps)) if i not in runner.skip]
        moved = runner.steps_flops(kept_steps[-tail])
        plain_ops -= tail
        flops = {**flops, "plain": flops["plain"] - moved}
        pathway_flops += moved
    return {"plain_ms": 1e3 * (flops["plain"] * batch / rate + plain_ops * op_cost),
            "generator_ms": 1e3 * (flops["generator"] * batch / rate + generator_ops * op_cost),
            "pathway_ms": 1e3 * (pathway_flops * batch / rate + pathway_ops * op_cost)}


def time_interleaved(fns: Sequence[Callable[[torch.Tensor], Any]], x: torch.Tensor, warmup: int, repeats: int,
                     budget: float, rounds: int = ROUNDS) -> list[list[float]]:
    """Seconds of each timed call of each fn(x), the fns timed in turn over `rounds` rounds: each gets
    `warmup` untimed calls before its first round, at least max(3, repeats) timed calls in all and more
    while its `budget` (split evenly over the rounds) lasts. Interleaving spreads a noisy spell of the
    host over every path instead of one: timed one after another on this 2-core VM, the auto and
    session rows of the same backend once differed by 30% at batch 1 (0.89 against 0.68 ms)."""
    floor = -(-max(3, repeats) // rounds)
    times: list[list[float]] = [[] for _ in fns]
    with torch.no_grad():
        for round_ in range(rounds):
            for fn, timed in zip(fns, times, strict=True):
                around = getattr(fn, "around", contextlib.nullcontext)  # e.g. the contention row's CPU load
                with around():
                    for _ in range(warmup if round_ == 0 else 0):
                        fn(x)
                    start = time.perf_counter()
                    calls = 0
                    while calls < floor or time.perf_counter() - start < budget / rounds:
                        t0 = time.perf_counter()
                        fn(x)
                        timed.append(time.perf_counter() - t0)
                        calls += 1
    return times


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _time_model(model: BenchModel, batches: Sequence[int], paths: Sequence[str], warmup: int, repeats: int,
                budget: float, context: dict, log: Callable[[str], None]) -> list[Row]:
    """One model's rows: at each batch its paths in turns (time_interleaved), then the TIMED_ALONE paths,
    each at every batch on its own."""
    rows: list[Row] = []
    flops_at_one: dict[str, float] = {}

    def prepared(path: str, batch: int, x: torch.Tensor) -> Callable[[torch.Tensor], Any] | None:
        runner = PATHS[path](model, batch)
        if isinstance(runner, str):
            context["skipped"].append(f"{model.name} {path} batch {batch}: {runner}")
            return None
        if path not in flops_at_one:
            # compiled kernels and custom ops are not countable: those rows get eager's dense-equivalent FLOPs
            counted = "eager" if path in DENSE_EQUIVALENT else path
            flops_at_one[path] = flops_at_one.get(counted) or count_flops(PATHS[counted](model, 1), x[:1])
        return runner

    def record(path: str, batch: int, runner: Callable[[torch.Tensor], Any], times: list[float]) -> None:
        ms = [1000 * t for t in times]
        recorded = getattr(runner, "phases", None)  # a path's own per-call phase timings (ms)
        if recorded:
            context["phases"][f"{model.name}|{path}|{batch}"] = {
                k: statistics.median(p[k] for p in recorded[warmup:] or recorded) for k in recorded[0]}
        images = batch * getattr(runner, "images_per_call", 1)
        rows.append(Row(model.name, path, batch, statistics.median(ms), _quantile(ms, 0.2), _quantile(ms, 0.8),
                        len(ms), flops_at_one[path] * images, images))
        log(f"  {model.name:<14} {path:<18} batch {batch:>3}: {rows[-1].median_ms:9.2f} ms "
            f"[{rows[-1].p20_ms:.2f}, {rows[-1].p80_ms:.2f}] over {len(ms)} runs")

    for batch in batches:  # the paths of each batch in turns
        x = model.inputs(batch)
        runners = {path: r for path in paths if path not in TIMED_ALONE
                   for r in [prepared(path, batch, x)] if r is not None}
        timed = time_interleaved(list(runners.values()), x, warmup, repeats, budget)
        for (path, runner), times in zip(runners.items(), timed, strict=True):
            record(path, batch, runner, times)
    for path in (p for p in TIMED_ALONE if p in paths):  # then these, each on its own, in TIMED_ALONE's order
        for batch in batches:
            x = model.inputs(batch)
            runner = prepared(path, batch, x)
            if runner is not None:
                record(path, batch, runner, time_interleaved([runner], x, warmup, repeats, budget, rounds=1)[0])
    return rows


def run_bench(models: Sequence[BenchModel], batches: Sequence[int], paths: Sequence[str], *, warmup: int = 2,
              repeats: int = 10, budget: float = 5.0, log: Callable[[str], None] = print) -> tuple[list[Row], dict]:
    """Measures every (model, path, batch); returns the rows and the run's context."""
    peak = matmul_flops_per_second()
    op_cost = op_seconds()
    context = {"device": device_name(), "torch": torch.__version__, "pathrt": __version__,
               "threads": torch.get_num_threads(), "wait_policy": describe_wait_policy(),
               "matmul_gflops_per_s": peak / 1e9, "op_us": 1e6 * op_cost, "notes": {}, "explanation_flops": {},
               "skipped": [], "phases": {}, "predicted": {}}
    log(f"device: {context['device']}; {context['wait_policy']}; measured float32 matmul: "
        f"{peak / 1e9:.1f} GFLOP/s; one small op {1e6 * op_cost:.1f} µs")
    rows: list[Row] = []
    for model in models:
        context["notes"][model.name] = model.note
        explainer = model.explainer
        one = torch.randn(1, *explainer.spec.input_shape)
        plain = count_flops(explainer.model, one)
        gen = count_flops(explainer.generator, capture_features(explainer.model, explainer.spec, one).features)
        context["explanation_flops"][model.name] = {"plain": plain, "generator": gen, "pathway": plain,
                                                    "total": 2 * plain + gen, **sparse_prediction(model)}
        log(f"{model.name}: {model.note}; one explanation = {(2 * plain + gen) / 1e6:.1f} MFLOP "
            f"(plain {plain / 1e6:.1f} + generator {gen / 1e6:.1f} + pathway {plain / 1e6:.1f})")
        for batch in batches:
            predicted = predict_phases(model, context["explanation_flops"][model.name], batch, peak, op_cost)
            context["predicted"][f"{model.name}|{batch}"] = predicted
            unit = predicted["plain_ms"]
            log(f"  predicted at batch {batch}: " + ", ".join(
                f"{k.removesuffix('_ms')} {v:.2f} ms ({v / unit:.2f}× plain)" for k, v in predicted.items()))
        rows.extend(_time_model(model, batches, paths, warmup, repeats, budget, context, log))
    by_key = {(r.model, r.path, r.batch): r for r in rows}
    for r in rows:
        plains = [p for p in (by_key.get((r.model, name, r.batch)) for name in PLAIN_PATHS) if p is not None]
        if plains:
            fastest = min(plains, key=lambda p: p.median_ms)
            r.fastest_plain, r.fastest_plain_passes = fastest.path, _per_image(r) / _per_image(fastest)
        base = by_key.get((r.model, "plain", r.batch))
        eager = by_key.get((r.model, "eager", r.batch))
        r.plain_passes = _per_image(r) / _per_image(base) if base else float("nan")
        r.speedup_vs_eager = _per_image(eager) / _per_image(r) if eager else float("nan")
        r.gflops_per_s = r.flops / (r.median_ms / 1000) / 1e9
        r.fraction_of_matmul_peak = r.gflops_per_s * 1e9 / peak
    return rows, context


def _per_image(row: Row) -> float:
    return row.median_ms / row.images


def write_outputs(rows: list[Row], context: dict, out: Path, sweep: Sequence[SweepRow] = ()) -> str:
    """bench.md (tables), bench.csv (one row per model/path/batch), bench.json, bench.png and, with a
    sparsity sweep, sparsity.png; returns the main table."""
    out.mkdir(parents=True, exist_ok=True)
    headers = ["model", "path", "batch", "median ms", "p20–p80 ms", "ms/image", "× fastest plain", "unit",
               "× eager plain", "speedup vs eager", "GFLOP/s", "% of matmul peak"]
    table = markdown_table(headers, [[r.model, r.path, r.batch, f"{r.median_ms:.2f}", f"{r.p20_ms:.2f}–{r.p80_ms:.2f}",
                                      f"{r.median_ms / r.images:.3f}", f"{r.fastest_plain_passes:.2f}",
                                      r.fastest_plain, f"{r.plain_passes:.2f}",
                                      f"{r.speedup_vs_eager:.2f}", f"{r.gflops_per_s:.1f}",
                                      f"{100 * r.fraction_of_matmul_peak:.1f}"] for r in rows])
    notes = "\n".join(f"- {name}: {note}" for name, note in context["notes"].items())
    flops = "\n".join(f"- {name}: one explanation = {f['total'] / 1e6:.1f} MFLOP (plain {f['plain'] / 1e6:.1f}, "
                      f"generator {f['generator'] / 1e6:.1f} = {f['generator'] / f['plain']:.1%} of plain, "
                      f"pathway {f['pathway'] / 1e6:.1f})" + _prediction_text(f)
                      for name, f in context["explanation_flops"].items())
    skipped = "\n".join(f"- {s}" for s in context["skipped"]) or "- none"
    (out / "bench.md").write_text(
        f"# pathrt bench\n\nDevice: {context['device']}; {context['wait_policy']}; "
        f"torch {context['torch']}; pathrt {context['pathrt']}; "
        f"measured float32 matmul {context['matmul_gflops_per_s']:.1f} GFLOP/s (% of matmul peak uses nominal "
        f"FLOPs: above 100% means fewer real FLOPs, e.g. Winograd convolutions).\n\nModels:\n{notes}\n\n"
        f"FLOPs (FlopCounterMode, per image; the native, triton and compiled rows are credited with eager's "
        f"dense-equivalent FLOPs, since custom ops and compiled kernels cannot be counted):\n{flops}\n\n"
        f"Timing: a model's paths at one batch take turns over {ROUNDS} rounds, so a noisy spell of the host "
        f"lands on all of them; {' and '.join(TIMED_ALONE)} are timed after the others, each on its own "
        f"(paths.TIMED_ALONE says why).\n\n{table}\n\n"
        f"{_phases_section(rows, context)}Skipped:\n{skipped}\n\n![bench](bench.png)\n"
        f"{_sweep_section(sweep, out) if sweep else ''}",
        encoding="utf-8")
    with open(out / "bench.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*asdict(rows[0]), "device", "torch", "pathrt"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**asdict(r), "device": context["device"], "torch": context["torch"],
                             "pathrt": context["pathrt"]})
    write_json(out / "bench.json", {"context": context, "rows": [asdict(r) for r in rows],
                                    "sparsity_sweep": [asdict(r) for r in sweep]})
    _plot(rows, out / "bench.png")
    return table


def _phases_section(rows: list[Row], context: dict) -> str:
    """The phase timings some paths record (the session's plain pass, generator, pathway pass), in ms
    and in fastest plain passes of the batch, measured during the timed runs, beside the prediction
    made before timing; a phase more than MISS away from its prediction is marked."""
    if not context.get("phases"):
        return ""
    fastest = {(r.model, r.batch): r.median_ms for r in rows if r.path in PLAIN_PATHS and r.fastest_plain == r.path}
    lines, misses = [], []
    for key, phases in context["phases"].items():
        model, path, batch = key.split("|")
        unit = fastest.get((model, int(batch)))
        predicted = context["predicted"].get(f"{model}|{batch}", {})
        cells = []
        for name, v in phases.items():
            guess = predicted.get(name)
            if name.endswith("_us"):  # the generator's own phases: microseconds, no prediction
                cells.append(f"{v:.0f} µs")
                continue
            if name == "threads":  # the threads the call ran on, not a time
                cells.append(f"{v:g}")
                continue
            cell = f"{v:.2f}" + (f" ({v / unit:.2f}×)" if unit else "")
            if guess:
                cell += f" / predicted {guess:.2f}"
                if abs(v / guess - 1) > MISS:
                    cell += " **miss**"
                    misses.append(f"{model} batch {batch} {name.removesuffix('_ms')}: measured {v:.2f} ms, "
                                  f"predicted {guess:.2f} ms ({v / guess:.2f}×)")
            cells.append(cell)
        lines.append([model, path, batch, *cells])
    names = [k.removesuffix("_ms").removesuffix("_us") for k in next(iter(context["phases"].values()))]
    context["prediction_misses"] = misses
    return ("Phases (median ms per call, × fastest plain pass of the batch, and the prediction made before "
            f"timing: FLOPs at the matmul rate + {context['op_us']:.1f} µs per op; then the generator's own "
            "phases in µs: RFE convs, RFE tail, PDN encoder layers, RPD decoder with heads and threshold; "
            "last, the median of the threads each call ran on):\n\n" +
            markdown_table(["model", "path", "batch", *names], lines) + "\n\n" +
            ("Predictions missed by more than 20%:\n" + "\n".join(f"- {m}" for m in misses) + "\n\n"
             if misses else ""))


def _prediction_text(f: dict[str, Any]) -> str:
    if "pathway_native_predicted" not in f:
        return ""
    sparsity = 1 - sum(f["kept_per_layer"]) / len(f["kept_per_layer"])
    return (f"; native pathway pass after layer 1: {f['pathway_native_dense'] / f['plain']:.2f} plain passes dense, "
            f"predicted {f['pathway_native_predicted'] / f['plain']:.3f} at the measured mean layer sparsity "
            f"{sparsity:.0%}, so native ≈ plain + {(f['generator'] + f['pathway_native_predicted']) / f['plain']:.2f} "
            "plain passes of FLOPs")


def _plot(rows: list[Row], path: Path) -> None:
    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r.model == model and r.path not in PLAIN_PATHS]
        paths = list(dict.fromkeys(r.path for r in mine))
        batches = sorted({r.batch for r in mine})
        width = 0.8 / max(1, len(batches))
        # in fastest plain passes; in ms per image when no plain path was run for this model
        in_passes = any(math.isfinite(r.fastest_plain_passes) for r in mine)
        for i, batch in enumerate(batches):
            values = [next((r.fastest_plain_passes if in_passes else _per_image(r)
                            for r in mine if r.path == p and r.batch == batch), 0) for p in paths]
            ax.bar([j + i * width for j in range(len(paths))], values, width, label=f"batch {batch}")
        ax.set_xticks([j + width * (len(batches) - 1) / 2 for j in range(len(paths))], paths, rotation=30,
                      fontsize=7, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("cost (fastest plain passes)" if in_passes else "ms per image (no plain path run)")
        ax.set_title(model, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class SweepRow:
    """The pathway pass of one model at one generator sparsity: eager (hooks, dense) against native
    with dense convs only, union-of-channels convs only, per-sample channel-sparse convs only, and
    the automatic choice."""

    model: str
    sparsity: float
    batch: int
    plain_ms: float
    eager_pathway_ms: float
    native_dense_ms: float
    native_union_ms: float
    native_sparse_ms: float
    native_auto_ms: float


def sparsity_sweep(models: Sequence[BenchModel], sparsities: Sequence[float], batch: int, *, warmup: int = 2,
                   repeats: int = 10, budget: float = 5.0, log: Callable[[str], None] = print) -> list[SweepRow]:
    """Pathway-pass time against sparsity (generators biased to each sparsity, same inputs)."""
    rows = []
    for model in models:
        target = model.explainer.target
        x = model.inputs(batch)
        for sparsity in sparsities:
            generator = generator_with_sparsity(target.spec, sparsity)
            eager = Explainer(target, generator, backend="eager")
            native = Explainer(target, generator, backend="native")
            runner = native.engine.runner  # type: ignore[attr-defined]  (the native backend's PlanRunner)
            with torch.no_grad():
                _, features, saved = runner.plain(x)
                masks = runner.kernels.daq_threshold_pack(torch.cat(generator.head_logits(features), 1))[1]
            layers = target.spec.split(masks)
            measured = float(1 - masks.float().mean())

            def pathway(strategy: str | None, runner=runner, saved=saved, features=features,
                        layers=layers) -> Callable:
                def run(_: torch.Tensor) -> torch.Tensor:
                    runner.strategy = strategy
                    return runner.pathway(saved, features, layers)
                return run

            timed = time_interleaved([
                eager.model, lambda x, e=eager, m=masks, spec=target.spec: pathway_forward(e.model, spec, x, m),
                pathway("dense"), pathway("union"), pathway("sparse"), pathway(None)], x, warmup, repeats, budget)
            ms = [1000 * statistics.median(t) for t in timed]
            rows.append(SweepRow(model.name, round(measured, 3), batch, *ms))
            log(f"  {model.name:<14} sparsity {measured:.2f}: pathway pass eager {ms[1]:.2f} ms, native dense "
                f"{ms[2]:.2f}, union {ms[3]:.2f}, sparse {ms[4]:.2f}, auto {ms[5]:.2f} (plain {ms[0]:.2f})")
    return rows


def sweep_table(rows: Sequence[SweepRow]) -> str:
    """The sparsity sweep as a Markdown table."""
    headers = ["model", "sparsity", "batch", "plain ms", "eager pathway ms", "native dense ms", "native union ms",
               "native sparse ms", "native auto ms", "auto × plain"]
    table = markdown_table(headers, [[r.model, f"{r.sparsity:.2f}", r.batch, f"{r.plain_ms:.2f}",
                                      f"{r.eager_pathway_ms:.2f}", f"{r.native_dense_ms:.2f}",
                                      f"{r.native_union_ms:.2f}", f"{r.native_sparse_ms:.2f}",
                                      f"{r.native_auto_ms:.2f}",
                                      f"{r.native_auto_ms / r.plain_ms:.2f}"] for r in rows])
    return table


def _sweep_section(rows: Sequence[SweepRow], out: Path) -> str:
    """The sweep's bench.md section; plots sparsity.png."""
    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r.model == model]
        xs = [100 * r.sparsity for r in mine]
        for attr, label in (("eager_pathway_ms", "eager"), ("native_dense_ms", "native dense"),
                            ("native_union_ms", "native union"), ("native_sparse_ms", "native sparse"),
                            ("native_auto_ms", "native auto")):
            ax.plot(xs, [getattr(r, attr) / r.plain_ms for r in mine], marker="o", label=label)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("pathway pass (plain forward passes)")
        ax.set_title(f"{model}, batch {mine[0].batch}", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sparsity.png", dpi=110)
    plt.close(fig)
    return (f"\n## Pathway pass against sparsity\n\nThe pathway pass alone (after the plain pass), with generators "
            f"biased to each sparsity. `native dense` forces dense convs with the fused epilogue, `native union` "
            f"convs over the batch's union of kept channels, `native sparse` per-sample channel-sparse convs, "
            f"`native auto` is what the backend chooses per conv.\n\n{sweep_table(rows)}\n\n"
            f"![sparsity](sparsity.png)\n")
