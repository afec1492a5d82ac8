"""Triton model repositories: the Python-backend explainer `pathrt serve` runs, and the exported ONNX
explainer for Triton's ONNX Runtime backend (`pathrt export --triton-repo`).

Each `config.pbtxt` is built as Triton's own `ModelConfig` protobuf (`tritonclient`'s
`model_config_pb2`) and written in its text format, so a misspelt field cannot be written; it is
read back with the same protobuf and its declared tensors compared with what the model really takes
and returns (the ONNX file's graph, or `pathrt.serving.protocol`). Triton's ONNX Runtime backend
ships only in NVIDIA's containers, so the ONNX repository is checked here but runs only there.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathrt.artifacts import atomic_write
from pathrt.errors import InputError, ServingError
from pathrt.serving.protocol import InputKind, TensorSpec, check_input_kind, input_specs, output_specs

MODEL_NAME = "pathrt"
ONNX_MODEL_NAME = "pathrt_onnx"
KINDS = ("auto", "cpu", "gpu")
_MODEL_PY = '"""Triton loads this file; the model is pathrt\'s (pathrt.serving.triton_model)."""\n' \
            "from pathrt.serving.triton_model import TritonPythonModel  # noqa: F401\n"
_ONNX_TYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16",
               11: "FP64"}


def _pb():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ServingError(f"Triton's model-config protobuf is missing ({e.name}): pip install 'pathrt[serve]'") from e
    return model_config_pb2, text_format


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic batcher: the largest batch, the batch sizes it prefers to form, and how long a
    request may wait for others (µs). Defaults: batches up to 64, a wait of at most 1 ms (a batch-1
    explanation of the embedded model takes several ms, so waiting 1 ms to share one costs little)."""

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 1000

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InputError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise InputError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise InputError(f"preferred batch sizes must lie in [1, max_batch_size={self.max_batch_size}], got {bad}")


@dataclass(frozen=True)
class Instances:
    """Where Triton runs copies of the model: (kind, count) pairs; kind auto (GPU where there is one,
    else CPU), cpu or gpu."""

    groups: tuple[tuple[str, int], ...] = (("auto", 1),)

    def __post_init__(self) -> None:
        for kind, count in self.groups:
            if kind not in KINDS or count < 1:
                raise InputError(f"instance groups are KIND=COUNT with KIND in {', '.join(KINDS)} and COUNT >= 1, "
                                 f"got {kind}={count}")

    @classmethod
    def parse(cls, specs: Sequence[str]) -> Instances:
        """From the command line's `KIND=COUNT` strings (e.g. `cpu=2`, `gpu=1`)."""
        groups = []
        for s in specs:
            kind, _, count = s.partition("=")
            if not count.isdigit():
                raise InputError(f"an instance group is KIND=COUNT (e.g. cpu=2), got {s!r}")
            groups.append((kind.lower(), int(count)))
        return cls(tuple(groups)) if groups else cls()


@dataclass
class ModelConfig:
    """What a config.pbtxt says, before it becomes Triton's protobuf."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: Batching
    instances: Instances
    backend: str = ""
    platform: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    reshaped: frozenset[str] = frozenset()  # rank-1 tensors: (N,) in the model, (N, 1) on the wire

    def to_protobuf(self) -> Any:
        pb, _ = _pb()
        config = pb.ModelConfig(name=self.name, max_batch_size=self.batching.max_batch_size)
        if self.backend:
            config.backend = self.backend
        if self.platform:
            config.platform = self.platform
        for specs, add in ((self.inputs, config.input.add), (self.outputs, config.output.add)):
            for t in specs:
                tensor = add(name=t.name, data_type=pb.DataType.Value("TYPE_" + t.dtype), dims=list(t.dims))
                if t.optional:
                    tensor.optional = True
                if t.name in self.reshaped:
                    tensor.reshape.shape[:] = []
        config.dynamic_batching.preferred_batch_size[:] = list(self.batching.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = self.batching.max_queue_delay_us
        for kind, count in self.instances.groups:
            config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value("KIND_" + kind.upper()), count=count)
        for key, value in self.parameters.items():
            config.parameters[key].string_value = value
        return config

    def text(self) -> str:
        _, text_format = _pb()
        return text_format.MessageToString(self.to_protobuf())


def read_config(path: str | os.PathLike[str]) -> Any:
    """A config.pbtxt parsed with Triton's ModelConfig protobuf (a ServingError names what is wrong)."""
    pb, text_format = _pb()
    try:
        return text_format.Parse(Path(path).read_text(encoding="utf-8"), pb.ModelConfig())
    except (OSError, text_format.ParseError) as e:
        raise ServingError(f"{path} is not a readable Triton model config: {e}") from e


def declared_tensors(config: Any) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """{'input'/'output': {name: (dtype without TYPE_, dims as the model sees them)}} of a parsed config."""
    pb, _ = _pb()

    def model_dims(t) -> tuple[int, ...]:
        return tuple(t.reshape.shape) if t.HasField("reshape") else tuple(t.dims)

    return {side: {t.name: (pb.DataType.Name(t.data_type).removeprefix("TYPE_"), model_dims(t))
                   for t in getattr(config, side)} for side in ("input", "output")}


def _compare(config_path: Path, config: Any, expected: dict[str, dict[str, tuple[str, tuple[int, ...]]]]) -> None:
    declared = declared_tensors(config)
    problems = [f"{side} {name}: declared {declared[side].get(name)}, the model has {want}"
                for side, tensors in expected.items() for name, want in tensors.items()
                if declared[side].get(name) != want]
    problems += [f"{side} {name}: declared, but the model has no such tensor"
                 for side, tensors in declared.items() for name in tensors if name not in expected[side]]
    if problems:
        raise ServingError(f"{config_path} does not match its model: " + "; ".join(problems))


def _write_config(model_dir: Path, config: ModelConfig) -> Path:
    path = model_dir / "config.pbtxt"
    text = config.text()
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def explainer_config(target, target_path: str | os.PathLike[str], generator_path: str | os.PathLike[str],
                     batching: Batching = Batching(), instances: Instances = Instances((("cpu", 1),)),
                     backend: str = "auto", inputs: InputKind = "raw", num_threads: int = 0,
                     name: str = MODEL_NAME) -> ModelConfig:
    """The Python-backend model of `pathrt serve`: loads target + generator from files in each instance."""
    return ModelConfig(
        name=name, backend="python", inputs=input_specs(target.input_shape),
        outputs=output_specs(target.spec.total_channels, target.num_classes), batching=batching, instances=instances,
        parameters={"target": str(Path(target_path).resolve()), "generator": str(Path(generator_path).resolve()),
                    "backend": backend, "inputs": check_input_kind(inputs), "num_threads": str(num_threads),
                    "spec": json.dumps(target.spec.to_dict()), "class_names": json.dumps(list(target.classes)),
                    "sys_path": json.dumps([p for p in sys.path if p])})


def write_explainer_repository(repo: str | os.PathLike[str], config: ModelConfig) -> Path:
    """repo/<name>/{config.pbtxt, 1/model.py} for the Python-backend explainer; checked by reading it back."""
    model_dir = Path(repo) / config.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    atomic_write(model_dir / "1" / "model.py", lambda tmp: tmp.write_text(_MODEL_PY, encoding="utf-8"))
    path = _write_config(model_dir, config)
    expected = {"input": {t.name: (t.dtype, t.dims) for t in config.inputs},
                "output": {t.name: (t.dtype, t.dims) for t in config.outputs}}
    _compare(path, read_config(path), expected)
    return model_dir


def onnx_tensors(onnx_path: str | os.PathLike[str]) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """{'input'/'output': {name: (dtype, dims without the batch axis)}} read from an ONNX file's graph;
    the batch axis must be symbolic (a fixed first dim cannot be batched)."""
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError and others for a corrupt file
        raise ServingError(f"{onnx_path} is not a readable ONNX file: {e}") from e
    out: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for side, values in (("input", graph.input), ("output", graph.output)):
        out[side] = {}
        for v in values:
            t = v.type.tensor_type
            dims = list(t.shape.dim)
            if not dims or dims[0].HasField("dim_value"):
                raise ServingError(f"{onnx_path}: {side} {v.name} has no dynamic batch axis; export it with "
                                   "`pathrt export` (dynamic batch)")
            if any(not d.HasField("dim_value") for d in dims[1:]):
                raise ServingError(f"{onnx_path}: {side} {v.name} has a symbolic dim after the batch axis")
            if t.elem_type not in _ONNX_TYPES:
                raise ServingError(f"{onnx_path}: {side} {v.name} has ONNX element type {t.elem_type}, which pathrt "
                                   "does not map to a Triton type")
            out[side][v.name] = (_ONNX_TYPES[t.elem_type], tuple(d.dim_value for d in dims[1:]))
    return out


def write_onnx_repository(repo: str | os.PathLike[str], onnx_path: str | os.PathLike[str],
                          batching: Batching = Batching(), instances: Instances = Instances(),
                          name: str = ONNX_MODEL_NAME) -> Path:
    """repo/<name>/{config.pbtxt, 1/model.onnx} for Triton's ONNX Runtime backend (platform
    onnxruntime_onnx), the tensors taken from the file, then checked (`check_onnx_repository`)."""
    tensors = onnx_tensors(onnx_path)
    specs = {side: tuple(TensorSpec(n, dtype, dims or (1,)) for n, (dtype, dims) in tensors[side].items())
             for side in tensors}
    config = ModelConfig(name=name, platform="onnxruntime_onnx", inputs=specs["input"], outputs=specs["output"],
                         batching=batching, instances=instances,
                         reshaped=frozenset(n for side in tensors for n, (_, d) in tensors[side].items() if not d))
    model_dir = Path(repo) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    atomic_write(model_dir / "1" / "model.onnx", lambda tmp: shutil.copyfile(onnx_path, tmp))
    _write_config(model_dir, config)
    check_onnx_repository(model_dir)
    return model_dir


def check_onnx_repository(model_dir: str | os.PathLike[str]) -> Any:
    """Parses model_dir/config.pbtxt with Triton's ModelConfig protobuf and compares its platform, batching
    and declared tensors (names, dtypes, dims) with model_dir/1/model.onnx; returns the parsed config
    (a ServingError lists every mismatch)."""
    model_dir = Path(model_dir)
    path = model_dir / "config.pbtxt"
    config = read_config(path)
    if config.platform != "onnxruntime_onnx" or config.max_batch_size < 1:
        raise ServingError(f"{path}: expected platform onnxruntime_onnx with max_batch_size >= 1, got platform "
                           f"{config.platform!r}, max_batch_size {config.max_batch_size}")
    _compare(path, config, onnx_tensors(model_dir / "1" / "model.onnx"))
    return config
