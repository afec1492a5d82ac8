"""ONNX export of generators and whole explainers, verified in ONNX Runtime, and loading them back.

`export_explainer` writes images → (logits, scores, masks, kept, pathway_logits, Y, O) and
`export_generator` pathway-layer features → (scores, masks, kept): dynamic batch axis, opset ≥ 18,
standard ONNX ops only (the fused pathrt ops export through their plain-PyTorch decompositions, see
`graph.py`), `onnx.checker` clean, and metadata recording the pathway spec, threshold, target and
generator fingerprints, pathrt version and the digest of the graph's tensors (checked by
`load_onnx`: a modified file is an ArtifactError). Verification runs the file in ONNX Runtime on fresh
inputs against the eager explainer and insists that different inputs give different outputs (a
graph constant-folded by tracing fails). Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pathrt.artifacts import atomic_write, parse_json, tensor_fingerprint
from pathrt.errors import ArtifactError, IncompatibleArtifactError, InputError, PathrtError
from pathrt.export.graph import EXPLAINER_OUTPUTS, GENERATOR_OUTPUTS, ExplainerGraph, GeneratorGraph
from pathrt.export.integrity import DIGEST_KEY, check_digest, tensors_digest
from pathrt.generator import PathwayGenerator
from pathrt.opspec import MASK_THRESHOLD, parity
from pathrt.runtime import Explainer
from pathrt.schemas import validate
from pathrt.targets import PathwaySpec, Target
from pathrt.targets.canonize import canonized_copy
from pathrt.version import __version__

FORMATS = {"explainer": "pathrt-onnx-explainer", "generator": "pathrt-onnx-generator"}
FORMAT_VERSION = 2  # 2: the metadata records the tensors' digest (pathrt.export.integrity)
MAX_ONNX_BYTES = 2 << 30
MIN_OPSET = 18
NOT_EXPORTABLE = {
    "pathway_gradient": "pathway gradients need autograd (a backward pass), which an ONNX inference graph does not "
                        "carry; compute them in Python with Explainer.pathway_gradient",
    "saliency": "saliency maps are pathway gradients, which need autograd; use Explainer.pathway_gradient",
}


class ExportError(PathrtError, ValueError):
    """A model or an output cannot be exported, or the exported file failed verification."""


@dataclass
class ExportReport:
    """What `export_*` wrote and how verification went."""

    path: str
    kind: str
    opset: int
    bytes: int
    export_seconds: float
    verify_seconds: float = 0.0
    verified_batches: list[int] = field(default_factory=list)
    max_rel_error: dict[str, float] = field(default_factory=dict)
    mask_mismatches_near_threshold: int = 0
    providers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _onnx() -> Any:
    try:
        import onnx
        import onnxruntime  # noqa: F401  (checked here so export fails before the slow trace)
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({exc}); install them with "
                          "`pip install pathrt[onnx]`") from exc
    return onnx


def check_requested_outputs(outputs: Sequence[str], kind: str) -> list[str]:
    """The outputs asked for, refusing (with the reason) those that cannot be exported."""
    known = EXPLAINER_OUTPUTS if kind == "explainer" else GENERATOR_OUTPUTS
    for name in outputs:
        if name in NOT_EXPORTABLE:
            raise ExportError(f"cannot export {name!r}: {NOT_EXPORTABLE[name]}")
        if name not in known:
            raise ExportError(f"unknown {kind} output {name!r}; exportable: {', '.join(known)}")
    return list(outputs)


def _metadata(kind: str, spec: PathwaySpec, target: Target, generator: PathwayGenerator, opset: int,
              outputs: Sequence[str], dtype: str = "float32") -> dict[str, str]:
    return {
        "dtype": dtype,
        "pathrt_format": FORMATS[kind],
        "pathrt_format_version": str(FORMAT_VERSION),
        "pathrt_version": __version__,
        "pathway_spec": json.dumps(spec.to_dict()),
        "threshold": str(MASK_THRESHOLD),
        "target_fingerprint": target.fingerprint,
        "generator_fingerprint": tensor_fingerprint(generator.state_dict()),
        "classes": json.dumps(list(target.classes)),
        "outputs": json.dumps(list(outputs)),
        "opset": str(opset),
    }


def _trace(graph: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str],
           output_names: list[str], opset: int, varargs: bool = False) -> Any:
    """torch.onnx (dynamo exporter) with a dynamic batch axis on every input → onnx.ModelProto.
    `varargs`: the graph's forward takes the inputs as *args (one structure for torch.export)."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dynamic: tuple = tuple({0: batch} for _ in example)
    if varargs:
        dynamic = (dynamic,)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, constant lifting)
        program = torch.onnx.export(graph, example, dynamo=True, opset_version=opset, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic, verbose=False,
                                    optimize=True, report=False)
    return program.model_proto


def finish_model(model: Any, meta: dict[str, str], path: Path | None = None) -> bytes:
    """Adds metadata (with the digest of the model's tensors), checks the model, writes it atomically
    (when `path` is given); returns its bytes."""
    onnx = _onnx()
    del model.metadata_props[:]
    for key, value in {**meta, DIGEST_KEY: tensors_digest(model)}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    if path is not None:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return data


def explainer_model(target: Target, generator: PathwayGenerator, *, opset: int = MIN_OPSET,
                    outputs: Sequence[str] = EXPLAINER_OUTPUTS, fp16: bool = False) -> tuple[Any, dict[str, str]]:
    """The whole explainer as an onnx.ModelProto (not yet saved) and its metadata; `fp16`: weights,
    images and outputs in float16 (half the file; looser verification, see `TOLERANCES`)."""
    _onnx()
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; pathrt exports opset >= {MIN_OPSET}")
    if generator.spec != target.spec:
        raise IncompatibleArtifactError("the generator was built for another pathway spec than the target's")
    outputs = check_requested_outputs(outputs, "explainer")
    from pathrt.targets.plan import PlanError

    try:
        dtype = torch.float16 if fp16 else torch.float32
        graph = ExplainerGraph(target, generator, dtype).eval()
    except PlanError as exc:
        raise ExportError(f"cannot export this model: {exc}") from exc
    example = (torch.randn(2, *target.spec.input_shape).to(dtype),)
    model = _trace(graph, example, ["images"], list(EXPLAINER_OUTPUTS), opset)
    _keep_outputs(model, outputs)
    return model, _metadata("explainer", target.spec, target, generator, opset, outputs, str(dtype).split(".")[-1])


def generator_model(target: Target, generator: PathwayGenerator, *,
                    opset: int = MIN_OPSET) -> tuple[Any, dict[str, str]]:
    """The generator alone (features → scores, masks, kept) as an onnx.ModelProto and its metadata."""
    _onnx()
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; pathrt exports opset >= {MIN_OPSET}")
    if generator.spec != target.spec:
        raise IncompatibleArtifactError("the generator was built for another pathway spec than the target's")
    graph = GeneratorGraph(generator).eval()
    example = tuple(torch.randn(2, lay.channels, lay.height, lay.width) for lay in target.spec.layers)
    names = [f"features_{i + 1}" for i in range(len(example))]
    model = _trace(graph, example, names, list(GENERATOR_OUTPUTS), opset, varargs=True)
    return model, _metadata("generator", target.spec, target, generator, opset, GENERATOR_OUTPUTS)


def _keep_outputs(model: Any, outputs: Sequence[str]) -> None:
    """Drops graph outputs not asked for (their nodes stay; ONNX Runtime prunes what nothing reads)."""
    keep = [o for o in model.graph.output if o.name in outputs]
    del model.graph.output[:]
    model.graph.output.extend(keep)


def export_explainer(target: Target, generator: PathwayGenerator, path: str | os.PathLike[str], *,
                     opset: int = MIN_OPSET, verify: bool = True, outputs: Sequence[str] = EXPLAINER_OUTPUTS,
                     fp16: bool = False) -> ExportReport:
    """Writes the whole explainer to `path` (.onnx) and, by default, verifies it in ONNX Runtime."""
    start = time.perf_counter()
    model, meta = explainer_model(target, generator, opset=opset, outputs=outputs, fp16=fp16)
    data = finish_model(model, meta, Path(path))
    report = ExportReport(str(path), "explainer", opset, len(data), time.perf_counter() - start)
    if verify:
        verify_explainer(data, target, generator, report)
    return report


def export_generator(target: Target, generator: PathwayGenerator, path: str | os.PathLike[str], *,
                     opset: int = MIN_OPSET, verify: bool = True) -> ExportReport:
    """Writes the generator alone to `path` (.onnx) and, by default, verifies it in ONNX Runtime."""
    start = time.perf_counter()
    model, meta = generator_model(target, generator, opset=opset)
    data = finish_model(model, meta, Path(path))
    report = ExportReport(str(path), "generator", opset, len(data), time.perf_counter() - start)
    if verify:
        verify_generator(data, target, generator, report)
    return report


# ---------------------------------------------------------------------------------------------
# Loading and running
# ---------------------------------------------------------------------------------------------


def providers_available() -> list[str]:
    """ONNX Runtime execution providers to ask for: CUDA first when onnxruntime-gpu sees a GPU."""
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider"] if torch.cuda.is_available() else []
    return [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]


@dataclass
class OnnxExplainerFile:
    """A loaded, checked pathrt ONNX file and its ONNX Runtime session."""

    session: Any
    kind: str
    spec: PathwaySpec
    metadata: dict[str, str]
    load_ms: float = 0.0  # wall time of `load_onnx` (parse, checks, session), file read excluded
    digest_ms: float = 0.0  # of which: the digest check of the tensors

    @property
    def providers(self) -> list[str]:
        """The providers the session really runs on (ONNX Runtime falls back to CPU silently)."""
        return list(self.session.get_providers())

    def run(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs the session on CPU tensors (cast to the file's float type); returns the outputs by name,
        floating ones as float32."""
        dtype = torch.float16 if self.metadata.get("dtype") == "float16" else torch.float32
        feeds = {i.name: t.detach().cpu().to(dtype).contiguous().numpy()
                 for i, t in zip(self.session.get_inputs(), inputs, strict=True)}
        names = [o.name for o in self.session.get_outputs()]
        try:
            values = self.session.run(names, feeds)
        except Exception as exc:  # onnxruntime's own types (Fail, InvalidArgument, ...): inputs were checked
            raise ArtifactError(f"ONNX Runtime failed running the pathrt {self.kind} file ({str(exc)[:300]}); the "
                                "file is corrupted or was not written by `pathrt export`: export it again") from exc
        out = {n: torch.from_numpy(v) for n, v in zip(names, values, strict=True)}
        return {n: t.float() if t.is_floating_point() else t for n, t in out.items()}


def session_options(num_threads: int = 0) -> Any:
    """ONNX Runtime session options pathrt uses for every session it opens: `num_threads` intra-op
    threads (0: torch's thread count, so ORT and torch never oversubscribe the cores together), one
    inter-op thread, and intra-op spinning off. A spinning ORT pool keeps its threads busy after each
    run; the torch work that follows in the same process (and any neighbour on the host) then runs
    many times slower, so pathrt trades ORT's few microseconds of wake-up for that."""
    import onnxruntime as ort

    if num_threads < 0:
        raise InputError(f"num_threads must be >= 0 (0: torch's thread count), got {num_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: a broken file is reported by the exception that follows
    return options


def plain_session(target: Target, *, opset: int = MIN_OPSET, num_threads: int = 0) -> Any:
    """An ONNX Runtime session of the target's canonized model alone (images -> logits), with
    `session_options`: the fastest plain prediction this machine offers, the unit `pathrt bench`
    measures explanations against."""
    import onnxruntime as ort

    model = canonized_copy(target.model).eval()
    example = torch.zeros(2, *target.spec.input_shape)
    proto = _trace(model, (example,), ["images"], ["logits"], opset)
    return ort.InferenceSession(proto.SerializeToString(), session_options(num_threads),
                                providers=["CPUExecutionProvider"])


def load_onnx(source: str | os.PathLike[str] | bytes, *, target: Target | None = None, kind: str = "explainer",
              providers: Sequence[str] | None = None, num_threads: int = 0) -> OnnxExplainerFile:
    """Loads a pathrt ONNX file (path or bytes), checks it (format, version, checker, the digest of its
    tensors, and when `target` is given its fingerprint and pathway spec) and opens an ONNX Runtime session.
    Clear errors otherwise. The session runs on `num_threads` threads without spinning (`session_options`)."""
    onnx = _onnx()
    import onnxruntime as ort

    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes):
        p = Path(source)
        if not p.is_file():
            raise ArtifactError(f"{p} does not exist; export one with `pathrt export`")
        if p.stat().st_size > MAX_ONNX_BYTES:
            raise ArtifactError(f"{p} is {p.stat().st_size} bytes, beyond the 2 GiB an ONNX protobuf can hold")
        source = p.read_bytes()
    start = time.perf_counter()
    try:
        model = onnx.load_from_string(source)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...: all mean "not a valid ONNX file"
        raise ArtifactError(f"{name} is not a valid ONNX model (corrupted or truncated?): {exc}") from exc
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("pathrt_format") != FORMATS[kind]:
        raise ArtifactError(f"{name} is not a pathrt {kind} ONNX file (format {meta.get('pathrt_format')!r}); "
                            f"export one with `pathrt export`")
    if meta.get("pathrt_format_version") != str(FORMAT_VERSION):
        raise ArtifactError(f"{name} has format version {meta.get('pathrt_format_version')}, this pathrt reads "
                            f"{FORMAT_VERSION}; export it again")
    validate(meta, "pathrt.onnx", name)
    digest_start = time.perf_counter()
    check_digest(model, meta, name)
    digest_ms = 1e3 * (time.perf_counter() - digest_start)
    try:
        spec_data = parse_json(meta["pathway_spec"], f"{name}'s pathway spec")
        validate(spec_data, "pathway_spec", name)
        spec = PathwaySpec.from_dict(spec_data)
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"{name} has no valid pathway spec in its metadata ({exc})") from exc
    if target is not None:
        if meta.get("target_fingerprint") != target.fingerprint:
            raise IncompatibleArtifactError(f"{name} was exported for other target weights (fingerprint "
                                            f"{meta.get('target_fingerprint', '?')[:12]}…, this target "
                                            f"{target.fingerprint[:12]}…); export it again for this target")
        if spec != target.spec:
            raise IncompatibleArtifactError(f"{name} was exported for another pathway spec than the target's")
    options = session_options(num_threads)
    if meta.get("dtype") == "float16":
        # ONNX Runtime 1.31's full (layout) optimizations crash the process on float16 convs on CPU;
        # (found by the fp16 export test); the extended level runs them correctly
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    try:
        session = ort.InferenceSession(source, options, providers=list(providers or providers_available()))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ArtifactError(f"ONNX Runtime cannot load {name}: {exc}") from exc
    return OnnxExplainerFile(session, kind, spec, meta, 1e3 * (time.perf_counter() - start), digest_ms)


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


# (relative error of logits and scores, band around the threshold where masks may differ) per file dtype:
# SPEC §8 (pathrt.opspec.parity) for float32; float16 carries ~3 decimal digits, so its file is held to
# 2e-2 and 1e-2.
TOLERANCES = {"float32": (parity.LOGITS_RTOL, parity.MASK_BAND), "float16": (2e-2, 1e-2)}


def _check_parity(got: dict[str, torch.Tensor], want: Any, names: Sequence[str], what: str, batch: int,
                  limit: float, band: float, report: ExportReport) -> None:
    """SPEC §8 against the eager reference (`pathrt.opspec.parity`), recorded in `report`; ExportError if broken."""
    result = parity.compare(got, want, [n for n in names if n in got], band=band, rtol=limit)
    for name, err in result.rel_errors.items():
        report.max_rel_error[name] = max(report.max_rel_error.get(name, 0.0), err)
    report.mask_mismatches_near_threshold += result.masks_within_band
    if not result.ok:
        raise ExportError(f"verification failed: the ONNX {what} differs from eager at batch {batch}: "
                          f"{'; '.join(result.problems())}")


def _check_varies(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], names: Sequence[str]) -> None:
    """Different inputs must give different outputs: a graph whose tracing folded the input away fails."""
    for name in names:
        if name in first and torch.equal(first[name], second[name]):
            raise ExportError(f"verification failed: output {name!r} is the same for different inputs; the "
                              "exported graph does not depend on its input (constant-folded by tracing?)")


def _report_for(source: bytes | str | os.PathLike[str], kind: str, report: ExportReport | None) -> ExportReport:
    """The report verification fills: the export's, or a fresh one for a file verified on its own."""
    return report or ExportReport("<bytes>" if isinstance(source, bytes) else str(source), kind, 0, 0, 0.0)


def _finish_report(report: ExportReport, loaded: OnnxExplainerFile, start: float) -> ExportReport:
    report.providers = loaded.providers
    report.verify_seconds = time.perf_counter() - start
    return report


def verify_explainer(source: bytes | str | os.PathLike[str], target: Target, generator: PathwayGenerator,
                     report: ExportReport | None = None, batches: Sequence[int] = (1, 7),
                     seed: int = 0) -> ExportReport:
    """Runs an exported explainer in ONNX Runtime on fresh inputs against the eager explainer (SPEC §8)."""
    start = time.perf_counter()
    report = _report_for(source, "explainer", report)
    loaded = load_onnx(source, target=target)
    limit, band = TOLERANCES[loaded.metadata.get("dtype", "float32")]
    eager = Explainer(target, generator, backend="eager")
    g = torch.Generator().manual_seed(seed)
    first, second = (loaded.run(torch.randn(batches[0], *target.spec.input_shape, generator=g)) for _ in range(2))
    _check_varies(first, second, ("logits", "scores", "pathway_logits"))
    for batch in batches:
        x = torch.randn(batch, *target.spec.input_shape, generator=g)
        out = loaded.run(x)
        want = eager.explain(x)
        _check_parity(out, want, ("logits", "pathway_logits", "Y", "O", "scores"), "explainer", batch, limit, band,
                      report)
        if "masks" in out and "kept" in out and not torch.equal(out["kept"], out["masks"].sum(1)):
            raise ExportError("verification failed: ONNX kept counts do not match its masks")
        report.verified_batches.append(batch)
    return _finish_report(report, loaded, start)


def verify_generator(source: bytes | str | os.PathLike[str], target: Target, generator: PathwayGenerator,
                     report: ExportReport | None = None, batches: Sequence[int] = (1, 7),
                     seed: int = 0) -> ExportReport:
    """Runs an exported generator in ONNX Runtime on fresh features against the eager generator."""
    from pathrt.targets import canonized_copy, capture_features

    start = time.perf_counter()
    report = _report_for(source, "generator", report)
    loaded = load_onnx(source, target=target, kind="generator")
    limit, band = TOLERANCES["float32"]
    model = canonized_copy(target.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        features = capture_features(model, target.spec, torch.randn(batches[0], *target.spec.input_shape,
                                                                    generator=g)).features
    _check_varies(loaded.run(*features), loaded.run(*[f.flip(0) * 2.0 + 1.0 for f in features]), ("scores",))
    for batch in batches:
        x = torch.randn(batch, *target.spec.input_shape, generator=g)
        with torch.no_grad():
            features = capture_features(model, target.spec, x).features
            want = generator.eval()(features)
        out = loaded.run(*features)
        reference = {"scores": torch.cat(want.scores, 1), "masks": torch.cat(want.masks, 1)}
        _check_parity(out, reference, ("scores",), "generator", batch, limit, band, report)
        report.verified_batches.append(batch)
    return _finish_report(report, loaded, start)
