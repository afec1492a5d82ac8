"""The timed paths of `pathrt bench`. Every explain path and baseline produces a pathway and scores it
(pathway logits), so their times compare. Adding a backend is one function here:

    @bench_path("name")
    def _name(model: BenchModel) -> Callable[[torch.Tensor], object] | str:
        return a callable timed on a batch, or a string saying why it cannot run here.
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from pathrt.baselines import critical_pathways, dgr_pathways, random_masks
from pathrt.errors import PathrtError
from pathrt.runtime import Explainer
from pathrt.runtime.backends.plan_backend import PlanBackend
from pathrt.runtime.backends.session import SessionBackend
from pathrt.runtime.fast_path import PlanRunner
from pathrt.runtime.fused_generator import FusedGenerator, folded_generator
from pathrt.targets import capture_features, pathway_forward

Runner = Callable[[torch.Tensor], object]


@dataclass
class BenchModel:
    """A target with its generator, as the benchmark sees it."""

    name: str
    explainer: Explainer
    note: str
    dgr_max_batch: int
    images: torch.Tensor | None = None  # real inputs at the model's operating point; random when None
    _backends: dict[tuple[str, str, int], Explainer | str] = field(default_factory=dict, repr=False)

    def inputs(self, batch: int) -> torch.Tensor:
        """`batch` inputs: the real images (cycled) when the model has them, else seeded random ones."""
        if self.images is None:
            shape = self.explainer.spec.input_shape
            return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        return self.images[torch.arange(batch) % len(self.images)]

    def backend(self, name: str, device: str = "cpu", num_threads: int = 0) -> Explainer | str:
        """An Explainer on `backend` and `device` (built once), or why it cannot run here."""
        key = (name, device, num_threads)
        if key not in self._backends:
            if device == "cuda" and not torch.cuda.is_available():
                self._backends[key] = "needs a CUDA GPU (none here)"
            else:
                target = self.explainer.target
                if device != "cpu":
                    target = copy.copy(target)
                    target.model = copy.deepcopy(target.model).to(device)
                generator = copy.deepcopy(self.explainer.generator).to(device)
                try:
                    self._backends[key] = Explainer(target, generator, backend=name, num_threads=num_threads)
                except PathrtError as exc:
                    self._backends[key] = str(exc)
        return self._backends[key]


PathFactory = Callable[[BenchModel, int], Runner | str]
PATHS: dict[str, PathFactory] = {}


def bench_path(name: str) -> Callable[[PathFactory], PathFactory]:
    """Registers a path factory: (model, batch size) -> runner, or the reason it is skipped."""

    def register(factory: PathFactory) -> PathFactory:
        PATHS[name] = factory
        return factory

    return register


# The plain passes: the target alone, predicting without explaining. The fastest of them on this
# machine is the unit explanations are measured in ("× fastest plain").
PLAIN_PATHS = ("plain", "plain-ort", "plain-compiled")
# Timed after the model's other paths at every batch, each on its own (one path at every batch, then the
# next) rather than in their interleaved rounds, since they leave the process or the host changed for a
# while: the contention row leaves this thread's call pool backed off (every session step on one thread
# for up to 2 s, call_pool.cpp's kMaxBackoff: interleaved, it slowed the auto row timed after it,
# ResNet-18@64 at batch 1 6.44 against the session row's 5.83 ms); inductor's
# compile workers linger after compiling and slow the rows timed after them (measured: the session row
# went from 43 to 55 ms at batch 64 right after a compile); and the two compiled paths, interleaved, share
# the target module: eager+compile's capture hooks stopped firing once plain-compiled had compiled it.
# They run in this order, whatever order --paths names them in: eager+compile before plain-compiled
# (`--paths plain-compiled eager+compile` failed with "pathway modules ... did not run").
TIMED_ALONE = ("auto+contention", "eager+compile", "plain-compiled")
# torch.compile as its best on CPU: inductor with weight freezing (constant-folded, prepacked weights)
COMPILE_OPTIONS = {"freezing": True}


@bench_path("plain")
def _plain(model: BenchModel, batch: int) -> Runner:
    """One plain forward of the canonized target in eager PyTorch."""
    return model.explainer.model


@bench_path("plain-ort")
def _plain_ort(model: BenchModel, batch: int) -> Runner | str:
    """The canonized target alone in ONNX Runtime (CPU provider, torch's thread count, spinning off),
    in this process."""
    try:
        from pathrt.export import plain_session
    except ImportError as exc:
        return f"onnx not installed ({exc})"
    session = plain_session(model.explainer.target)
    return lambda x: session.run(["logits"], {"images": x.numpy()})[0]


@bench_path("eager")
def _eager(model: BenchModel, batch: int) -> Runner:
    """The eager explain path: plain pass with capture, generator, pathway pass, packing."""
    return model.explainer.explain


def _on_device(explainer: Explainer, device: str) -> Runner:
    if device == "cpu":
        return explainer.explain

    def run(x: torch.Tensor) -> object:  # includes the copy of the batch to the device
        out = explainer.explain(x.to(device))
        torch.cuda.synchronize()
        return out

    return run


def _fast_backend(name: str, device: str) -> PathFactory:
    def factory(model: BenchModel, batch: int) -> Runner | str:
        explainer = model.backend(name, device)
        return explainer if isinstance(explainer, str) else _on_device(explainer, device)

    factory.__doc__ = f"The {name} backend on {device}: hook-free plan, fused kernels, channel-sparse convs."
    return factory


bench_path("auto")(_fast_backend("auto", "cpu"))
bench_path("session")(_fast_backend("session", "cpu"))
bench_path("native")(_fast_backend("native", "cpu"))


@bench_path("session-raw")
def _session_raw(model: BenchModel, batch: int) -> Runner | str:
    """`pathrt._C.ExplainSession.explain` alone (a dict of tensors, no Explanation); its `phases` are the
    session's own timings of each call: plain pass (with the RFE input pooling), generator, pathway pass."""
    explainer = model.backend("session")
    if isinstance(explainer, str):
        return explainer
    engine = explainer.engine
    assert isinstance(engine, SessionBackend)
    session = engine.session
    phases: list[dict[str, float]] = []

    def run(x: torch.Tensor) -> object:
        out = session.explain(x)
        phases.append(out["timings"])
        return out

    run.phases = phases  # type: ignore[attr-defined]  (read by the harness)
    return run
bench_path("native-cuda")(_fast_backend("native", "cuda"))
bench_path("triton")(_fast_backend("triton", "cuda"))


@bench_path("onnxruntime")
def _onnxruntime(model: BenchModel, batch: int) -> Runner | str:
    """The whole explainer exported to ONNX, run by ONNX Runtime (CPU provider here)."""
    explainer = model.backend("onnx")
    return explainer if isinstance(explainer, str) else explainer.explain


def _native_runner(model: BenchModel) -> tuple[Explainer, PlanRunner] | str:
    """The native backend's explainer and plan runner, or why it cannot run here."""
    explainer = model.backend("native")
    if isinstance(explainer, str):
        return explainer
    engine = explainer.engine
    assert isinstance(engine, PlanBackend)
    return explainer, engine.runner


@bench_path("native-plain")
def _native_plain(model: BenchModel, batch: int) -> Runner | str:
    """The native backend's plain pass alone (hook-free plan, channels-last): the part it cannot skip."""
    native = _native_runner(model)
    if isinstance(native, str):
        return native
    return lambda x: native[1].plain(x)[0]


def _generator_path(fused: bool) -> PathFactory:
    def factory(model: BenchModel, batch: int) -> Runner | str:
        native = _native_runner(model)
        if isinstance(native, str):
            return native
        explainer, runner = native
        features = runner.plain(model.inputs(batch))[1]  # channels-last, as the session's generator sees them
        generator = folded_generator(explainer.generator)
        if fused:
            ops = FusedGenerator(generator, torch.ops.pathrt)
            return lambda x: ops(features)
        return lambda x: torch.sigmoid(torch.cat(generator.head_logits(features), 1))

    factory.__doc__ = ("The generator alone on the plain pass's features: " +
                       ("the fused ops the session runs (rfe_tail, pdn_encoder_layer, rpd_decode)" if fused else
                        "the BatchNorm-folded nn modules (the baseline the fused ops replace)"))
    return factory


bench_path("generator-fused")(_generator_path(fused=True))
bench_path("generator-modules")(_generator_path(fused=False))


@contextlib.contextmanager
def busy_cores(processes: int, limit_s: float = 600.0) -> Iterator[None]:
    """`processes` busy-looping processes beside this one (each ends by itself after `limit_s`), killed on exit."""
    loop = f"import time\nend = time.monotonic() + {limit_s}\nwhile time.monotonic() < end: pass"
    load = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(processes)]
    try:
        time.sleep(0.2)  # let them start spinning
        yield
    finally:
        for p in load:
            p.kill()
        for p in load:
            p.wait()


@bench_path("auto+contention")
def _contention(model: BenchModel, batch: int) -> Runner | str:
    """The default (auto) path at batch 1 while one busy process per core runs beside it (a host
    shared with other work); compare with the `auto` row."""
    if batch != 1:
        return "measured at batch 1 only (latency under load)"
    explainer = model.backend("auto")
    if isinstance(explainer, str):
        return explainer
    run = explainer.explain
    run_with_load = lambda x: run(x)  # noqa: E731  (an object the harness can attach `around` to)
    run_with_load.around = lambda: busy_cores(os.cpu_count() or 1)  # type: ignore[attr-defined]
    return run_with_load


@bench_path("session-2x1thread")
def _two_sessions(model: BenchModel, batch: int) -> Runner | str:
    """Throughput of a single-thread session serving two calls at once (two Python threads; the
    session releases the GIL), as two single-thread workers would: one call here explains 2 × batch
    images. Compare its ms/image with the `session` row (one call at a time on every thread)."""
    explainer = model.backend("session", num_threads=1)
    if isinstance(explainer, str):
        return explainer
    session = explainer.engine.session  # type: ignore[attr-defined]  (the C++ ExplainSession)
    pool = ThreadPoolExecutor(2, thread_name_prefix="pathrt-bench")

    def run(x: torch.Tensor) -> object:
        return [f.result() for f in [pool.submit(session.explain, x) for _ in range(2)]]

    run.images_per_call = 2  # type: ignore[attr-defined]  (read by the harness)
    return run


@bench_path("random")
def _random(model: BenchModel, batch: int) -> Runner:
    """Random pathways (half the neurons), scored like every explanation (plain + pathway pass)."""
    explainer = model.explainer
    total = explainer.spec.total_channels
    kept = torch.full((batch,), total // 2)
    return lambda x: explainer.explain_with_masks(x, random_masks(kept, total), label="random")


@bench_path("critical-pathways")
def _critical(model: BenchModel, batch: int) -> Runner:
    """Critical pathways (1 forward + 1 backward for the contributions), scored (plain + pathway pass)."""
    return lambda x: critical_pathways(model.explainer, x, sparsity=0.5)


@bench_path("dgr")
def _dgr(model: BenchModel, batch: int) -> Runner | str:
    """DGR (31 forward + 30 backward passes to optimize the gates), scored (plain + pathway pass)."""
    if batch > model.dgr_max_batch:
        return f"skipped above batch {model.dgr_max_batch} (30 optimization steps; --dgr-max-batch raises it)"
    return lambda x: dgr_pathways(model.explainer, x)


@bench_path("eager+compile")
def _compiled(model: BenchModel, batch: int) -> Runner:
    """The same computation under torch.compile (inductor); compiled once per batch size, not timed."""
    explainer = model.explainer

    def explain(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        capture = capture_features(explainer.model, explainer.spec, x, check_inplace=False)
        out = explainer.generator(capture.features)
        return pathway_forward(explainer.model, explainer.spec, x, out.masks), out.scores

    return torch.compile(explain, dynamic=False, options=COMPILE_OPTIONS)


@bench_path("plain-compiled")
def _plain_compiled(model: BenchModel, batch: int) -> Runner:
    """The canonized target under torch.compile (inductor, freezing); compiled once per batch size, not timed."""
    return torch.compile(model.explainer.model, dynamic=False, options=COMPILE_OPTIONS)
