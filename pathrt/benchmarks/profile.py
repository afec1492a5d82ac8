"""`pathrt profile`: where the time of one explanation goes, on any backend.

It explains one batch (after warm-up calls) under torch.profiler and writes
  * profile.md: a per-phase table (plain pass, generator, pathway pass) with each phase's FLOPs and
    bytes against this machine's measured matmul rate and memory bandwidth, and the per-op table;
  * trace.json: the torch.profiler trace, viewable in Perfetto (ui.perfetto.dev) or chrome://tracing.
The phases are the session's own timings for the C++ path (its ops appear in the per-op table and the
trace too: ATen records them from C++), and the three calls of the plan backends and eager timed one
by one. The onnx backend is one ONNX Runtime call: one phase, its ops are ORT's (not in the trace).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from pathrt.artifacts import write_json
from pathrt.benchmarks.harness import matmul_flops_per_second, sparse_prediction
from pathrt.benchmarks.paths import BenchModel
from pathrt.errors import InputError
from pathrt.flops import count_flops
from pathrt.report import markdown_table
from pathrt.runtime.backends.plan_backend import PlanBackend
from pathrt.runtime.backends.session import SessionBackend
from pathrt.targets import capture_features, pathway_forward


@dataclass
class Phase:
    """One phase of an explanation: median ms over the timed calls, its FLOPs and bytes moved."""

    name: str
    ms: float
    flops: float
    bytes: float
    gflops_per_s: float = 0.0
    fraction_of_matmul_peak: float = 0.0
    gbytes_per_s: float = 0.0
    fraction_of_bandwidth: float = 0.0


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """This machine's copy bandwidth (bytes read + written per second): the best of a few large copies."""
    src = torch.empty(megabytes << 18)  # float32: 4 bytes each
    dst = torch.empty_like(src)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = max(best, 2 * src.numel() * 4 / (time.perf_counter() - start))
    return best


def _phase_calls(model: BenchModel, backend: Any, x: torch.Tensor) -> list[tuple[str, Any]] | None:
    """The explanation split into its phases as separate calls, where the backend allows it."""
    engine = backend.engine
    if isinstance(engine, PlanBackend):
        state: dict[str, Any] = {}

        def plain() -> None:
            state["plain"] = engine.runner.plain(x)

        def generator() -> None:
            state["masks"] = engine.fused(state["plain"][1])[2]

        def pathway() -> None:
            _, features, saved = state["plain"]
            engine.runner.pathway(saved, features, model.explainer.spec.split(state["masks"]))

        return [("plain", plain), ("generator", generator), ("pathway", pathway)]
    if engine.name == "eager":
        explainer, spec = model.explainer, model.explainer.spec
        state = {}

        def plain() -> None:
            with explainer.using_model() as m:
                state["features"] = capture_features(m, spec, x, check_inplace=False).features

        def generator() -> None:
            state["masks"] = explainer.generator(state["features"]).masks

        def pathway() -> None:
            with explainer.using_model() as m:
                pathway_forward(m, spec, x, state["masks"])

        return [("plain", plain), ("generator", generator), ("pathway", pathway)]
    return None


def _phase_work(model: BenchModel, batch: int) -> dict[str, tuple[float, float]]:
    """(FLOPs, bytes) per phase for `batch` images: the plain pass's and generator's counted FLOPs, the
    pathway pass's at the generator's measured layer sparsity; bytes = weights read once + every
    activation written and read once (float32)."""
    explainer = model.explainer
    one = torch.randn(1, *explainer.spec.input_shape)
    features = capture_features(explainer.model, explainer.spec, one).features
    plain_flops = count_flops(explainer.model, one)
    generator_flops = count_flops(explainer.generator, features)
    target_weights = sum(p.numel() for p in explainer.model.parameters())
    generator_weights = sum(p.numel() for p in explainer.generator.parameters())
    activations = sum(f.numel() for f in features)
    pathway_flops, pathway_share = float(plain_flops), 1.0
    counted = sparse_prediction(model)  # the bench's count: the generator's layer sparsity on these inputs
    if counted:
        native = model.backend("native")
        activations = sum(torch.Size(s).numel() for s in native.engine.runner.shapes.values())  # type: ignore[union-attr]
        pathway_flops = counted["pathway_native_predicted"]
        pathway_share = sum(counted["kept_per_layer"]) / len(counted["kept_per_layer"])
    feature_values = sum(f.numel() for f in features)
    return {"plain": (plain_flops * batch, 4.0 * (target_weights + 2 * activations * batch)),
            "generator": (generator_flops * batch, 4.0 * (generator_weights + 2 * feature_values * batch)),
            "pathway": (pathway_flops * batch, 4.0 * (target_weights * pathway_share + 2 * activations * batch))}


def run_profile(model: BenchModel, backend_name: str, batch: int, out: Path, *, warmup: int = 3,
                repeats: int = 10, ops: int = 25) -> str:
    """Profiles `backend_name` explaining `batch` images of `model`; writes profile.md, profile.json
    and trace.json under `out`; returns profile.md's text."""
    if batch < 1 or repeats < 1 or warmup < 0 or ops < 1:
        raise InputError("--batch, --repeats and --ops must be >= 1 and --warmup >= 0")
    backend = model.backend(backend_name)
    if isinstance(backend, str):
        raise InputError(f"backend {backend_name!r} cannot run here: {backend}")
    x = model.inputs(batch)
    peak, bandwidth = matmul_flops_per_second(), memory_bandwidth()
    work = _phase_work(model, batch)
    calls = _phase_calls(model, backend, x)
    times: dict[str, list[float]] = {}
    generator_us: dict[str, list[float]] = {}  # the session's generator phases

    def one_call(record: dict[str, list[float]]) -> None:
        if isinstance(backend.engine, SessionBackend):  # the session times its own phases
            timings = backend.engine.session.explain(x)["timings"]
            for name in ("plain", "generator", "pathway"):
                record.setdefault(name, []).append(timings[f"{name}_ms"])
            for key, us in timings.items():
                if key.startswith("generator."):
                    generator_us.setdefault(key.removeprefix("generator.").removesuffix("_us"), []).append(us)
            return
        for name, call in calls or [("whole (one ONNX Runtime call)", lambda: backend.explain(x))]:
            with record_function(f"pathrt.{name}"):
                start = time.perf_counter()
                call()
                record.setdefault(name, []).append(1e3 * (time.perf_counter() - start))

    with torch.no_grad():
        for _ in range(warmup):
            backend.explain(x)
        for _ in range(repeats):  # timed without the profiler's overhead
            one_call(times)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                one_call({})
    out.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out / "trace.json"))
    phases = []
    for name, values in times.items():
        flops, moved = work.get(name, (sum(f for f, _ in work.values()), sum(b for _, b in work.values())))
        ms = statistics.median(values)
        seconds = ms / 1e3
        phases.append(Phase(name, ms, flops, moved, flops / seconds / 1e9, flops / seconds / peak,
                            moved / seconds / 1e9, moved / seconds / bandwidth))
    phase_table = markdown_table(
        ["phase", "median ms", "MFLOP", "MB moved", "GFLOP/s", "% of matmul peak", "GB/s", "% of bandwidth"],
        [[p.name, f"{p.ms:.3f}", f"{p.flops / 1e6:.1f}", f"{p.bytes / 1e6:.2f}", f"{p.gflops_per_s:.1f}",
          f"{100 * p.fraction_of_matmul_peak:.1f}", f"{p.gbytes_per_s:.2f}", f"{100 * p.fraction_of_bandwidth:.1f}"]
         for p in phases])
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:ops]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    op_table = markdown_table(
        ["op", "calls per explanation", "self µs per explanation", "share of self time", "µs per call"],
        [[e.key, f"{e.count / repeats:.0f}", f"{e.self_cpu_time_total / repeats:.1f}",
          f"{100 * e.self_cpu_time_total / total:.1f}%", f"{e.self_cpu_time_total / max(e.count, 1):.1f}"]
         for e in averages])
    generator_phases = {name: statistics.median(values) for name, values in generator_us.items()}
    generator_table = ("\n\nThe generator's own phases (the session's timings, median µs per call):\n\n" +
                       markdown_table([n.replace("_", " ") for n in generator_phases],
                                      [[f"{us:.0f}" for us in generator_phases.values()]])
                       if generator_phases else "")
    text = (f"# pathrt profile: {model.name}, backend {backend.backend}, batch {batch}\n\n"
            f"{backend.backend_reason}. {repeats} profiled calls after {warmup} warm-up calls; this machine: "
            f"{peak / 1e9:.1f} GFLOP/s float32 matmul, {bandwidth / 1e9:.1f} GB/s copy bandwidth.\n\n"
            f"## Phases\n\n{phase_table}{generator_table}\n\n## Ops (self CPU time, top {ops})\n\n{op_table}\n\n"
            "Trace: trace.json (open in https://ui.perfetto.dev or chrome://tracing).\n")
    (out / "profile.md").write_text(text, encoding="utf-8")
    write_json(out / "profile.json", {"model": model.name, "backend": backend.backend, "batch": batch,
                                      "matmul_gflops_per_s": peak / 1e9, "bandwidth_gb_per_s": bandwidth / 1e9,
                                      "phases": [asdict(p) for p in phases], "generator_phases_us": generator_phases})
    return text
