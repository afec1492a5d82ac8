"""The plan contract (pathrt/bundle.schema.json) held against both executors: the Python writer
validates against it and follows its strategy policy, the C++ reader implements the same version,
ops, strategies and measures and refuses a bundle missing any key the schema requires, and its JSON
reader takes RFC 8259 numbers only, whatever the C locale."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pathrt import bundle_format
from pathrt.benchmarks.harness import generator_with_sparsity
from pathrt.errors import BundleError
from pathrt.generator import GeneratorConfig, PathwayGenerator
from pathrt.kernels import native as extension
from pathrt.opspec import parity
from pathrt.runtime import Explainer
from pathrt.runtime.bundle import bundle_bytes
from pathrt.targets import Target, build_spec
from tests.conftest import ROOT, assert_parity, torchvision_target, varied_generator

pytestmark = pytest.mark.skipif(extension.EXTENSION is None, reason="needs the compiled extension")

# top-level keys the Python loader reads and the C++ reader need not (versions and digests of the sources)
INFORMATIONAL = {"pathrt_version", "generator_fingerprint", "tensors_fingerprint"}


def _toy_target() -> Target:
    """Every plan op the lowering emits for plain CNNs: conv (fused relu), relu, max/avg/adaptive pool,
    flatten and linear."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                          nn.MaxPool2d(2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4)).eval()
    return Target(model, "toy", build_spec(model, (3, 16, 16)), ("a", "b", "c", "d"), (0.0,) * 3, (1.0,) * 3)


@pytest.fixture(scope="module")
def toy() -> tuple[Target, PathwayGenerator, bytes]:
    target = _toy_target()
    generator = PathwayGenerator(target.spec, GeneratorConfig.small()).eval()
    return target, generator, bundle_bytes(target, generator)


def _split(data: bytes) -> tuple[dict, dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    return header, json.loads(header["__metadata__"]["pathrt"]), data[8 + length:]


def _join(header: dict, meta_text: str, body: bytes) -> bytes:
    header = {**header, "__metadata__": {"pathrt": meta_text}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _open(data: bytes):
    return extension.EXTENSION.ExplainSession.from_bytes(data, "<test>", 1)  # type: ignore[union-attr]


def test_cxx_reader_implements_the_schema() -> None:
    native = extension.EXTENSION.bundle_format()  # type: ignore[union-attr]
    assert native["version"] == bundle_format.VERSION == bundle_format.SCHEMA["properties"]["format_version"]["const"]
    assert sorted(native["ops"]) == sorted(bundle_format.PLAN_OPS)
    assert sorted(native["strategies"]) == sorted(bundle_format.STRATEGIES)
    assert sorted(native["measures"]) == sorted(bundle_format.MEASURES)
    # every policy rule of every device names a strategy and a measure both executors know
    for device in ("cpu", "cuda"):
        for rule in bundle_format.conv_strategies(device):
            assert rule.name in native["strategies"] and rule.measure in native["measures"] and 0 <= rule.limit <= 1


def test_written_bundles_follow_the_schema(toy) -> None:
    _, _, data = toy
    _, meta, _ = _split(data)
    bundle_format.validate(meta)  # what the writer already did; the file is the one it checks against
    assert {s["op"] for s in meta["plan"]["steps"]} >= {"conv2d", "relu", "max_pool2d", "avg_pool2d",
                                                        "adaptive_avg_pool2d", "linear"}
    assert meta["conv_strategies"] == [r.to_json() for r in bundle_format.conv_strategies("cpu")]
    names = meta["generator"]["tensors"]
    assert names["stem"][0] == [bundle_format.tensor_name("stem", i=j, layer=0) for j in range(2)]
    broken = {**meta, "plan": {**meta["plan"], "steps": [{**meta["plan"]["steps"][0], "op": "conv3d"}]}}
    with pytest.raises(BundleError, match=r"plan/steps/0/op"):
        bundle_format.validate(broken)


def _required_keys(meta: dict) -> list[tuple[str, object]]:
    """(description, edit) for every key the schema requires in this bundle: top level, plan, generator,
    its tensor names and, for the first step of each op, the common and the op's own step keys."""
    schema, defs = bundle_format.SCHEMA, bundle_format.SCHEMA["$defs"]
    cases: list[tuple[str, object]] = [(k, (k,)) for k in schema["required"] if k not in INFORMATIONAL]
    cases += [(f"plan.{k}", ("plan", k)) for k in defs["plan"]["required"]]
    cases += [(f"generator.{k}", ("generator", k)) for k in defs["generator"]["required"]]
    cases += [(f"generator.tensors.{k}", ("generator", "tensors", k))
              for k in defs["generator"]["properties"]["tensors"]["required"]]
    per_op: dict[str, list[str]] = {}
    for rule in defs["step"]["allOf"]:
        condition = rule["if"]["properties"]["op"]
        for op in condition.get("enum", [condition.get("const")]):
            per_op.setdefault(op, []).extend(rule["then"]["required"])
    seen = set()
    for index, step in enumerate(meta["plan"]["steps"]):
        if step["op"] in seen:
            continue
        seen.add(step["op"])
        for key in defs["step"]["required"] + per_op.get(step["op"], []):
            cases.append((f"{step['op']}.{key}", ("plan", "steps", index, key)))
    return cases


def test_cxx_reader_refuses_every_missing_required_key(toy) -> None:
    _, _, data = toy
    header, meta, body = _split(data)
    _open(data).explain(torch.zeros(1, 3, 16, 16))  # the untouched bundle loads and runs
    cases = _required_keys(meta)
    assert len(cases) > 40
    for what, path in cases:
        edited = json.loads(json.dumps(meta))
        node = edited
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        with pytest.raises(BundleError, match="cannot load bundle"):
            _open(_join(header, json.dumps(edited), body))
        with pytest.raises(BundleError):
            bundle_format.validate(edited)
        assert what  # (named for the failure message of the raises above)


@pytest.mark.parametrize(("text", "accepted"), [
    ("1e-05", True), ("0.00001", True), ("1E-5", True), ("10e-6", True), ("1.0e-5", True),
    ("+1e-05", False), ("01e-05", False), (".00001", False), ("1.e-5", False), ("1e", False), ("1e+", False),
    ("-", False), ("0x1p-17", False), ("1e-5.0", False), ("1,0e-5", False)])
def test_json_numbers_follow_rfc8259(toy, text: str, accepted: bool) -> None:
    _, _, data = toy
    header, meta, body = _split(data)
    meta_text = json.dumps(meta)
    eps = json.dumps(meta["generator"]["tail_eps"])
    assert f'"tail_eps": {eps}' in meta_text
    edited = _join(header, meta_text.replace(f'"tail_eps": {eps}', f'"tail_eps": {text}'), body)
    if accepted:
        _open(edited).explain(torch.zeros(1, 3, 16, 16))
    else:
        with pytest.raises(BundleError, match="not valid JSON"):
            _open(edited)


def test_bundles_load_under_a_comma_decimal_locale(toy, tmp_path: Path) -> None:
    """A C++ host whose C locale writes 0,5 reads bundles the same (std::from_chars ignores the locale)."""
    target, generator, _ = toy
    locales = tmp_path / "locales"
    locales.mkdir()
    made = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(locales / "de_DE.UTF-8")],
                          capture_output=True, text=True, timeout=120)
    assert (locales / "de_DE.UTF-8").is_dir(), f"cannot make a de_DE locale here: {made.stderr}"
    (tmp_path / "toy.bundle").write_bytes(bundle_bytes(target, generator))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import locale, sys, torch\n"
        "import pathrt\n"
        "from pathrt.kernels import native\n"
        "locale.setlocale(locale.LC_NUMERIC, 'de_DE.UTF-8')\n"
        "assert locale.localeconv()['decimal_point'] == ','\n"
        f"session = native.EXTENSION.ExplainSession({str(tmp_path / 'toy.bundle')!r}, 1)\n"
        f"out = session.explain(torch.load({str(tmp_path / 'x.pt')!r}))\n"
        f"torch.save({{k: v for k, v in out.items() if k != 'timings'}}, {str(tmp_path / 'out.pt')!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={"LOCPATH": str(locales), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    want = Explainer(target, generator, backend="session").explain(x)
    assert torch.equal(got["masks"], want.masks) and torch.equal(got["pathway_logits"], want.pathway_logits)


@pytest.mark.parametrize("policy", [
    [{"name": "sparse", "measure": "mean_kept_product", "limit": 1.0}],  # every masked conv per-sample sparse
    [{"name": "union", "measure": "union_kept_product", "limit": 1.0}],  # every masked conv over the union
    []])  # no rule applies: dense
def test_both_executors_follow_the_policy_they_are_given(embedded, policy: list[dict]) -> None:
    """The policy is data both executors follow: the same rules in the Python runner and in the C++
    session's bundle give the eager result, whichever strategy they force."""
    generator = varied_generator(embedded.spec, sparsity_bias=-1.0)
    x = torch.randn(8, *embedded.spec.input_shape, generator=torch.Generator().manual_seed(3))
    eager = Explainer(embedded, generator, backend="eager").explain(x)
    native = Explainer(embedded, generator, backend="native")
    native.engine.runner.policy = tuple(bundle_format.StrategyRule(**rule) for rule in policy)
    assert_parity(eager, native.explain(x))
    header, meta, body = _split(bundle_bytes(embedded, generator))
    out = _open(_join(header, json.dumps({**meta, "conv_strategies": policy}), body)).explain(x)
    report = parity.compare(out, eager)
    assert report.ok, report.describe()


@pytest.mark.parametrize("fixed", [True, False])
def test_forced_union_convs_of_a_resnet_give_the_eager_result(fixed: bool) -> None:
    """Union convs on ResNet-18's blocks (the session's one-pass union epilogue: bias, the residual's kept
    channels read in place, ReLU, each sample's mask inside the union, the kept outputs placed), through
    oneDNN at 4x4 and up and the batched GEMM conv at 2x2 (5 images: 20 pixels, past the sparse bound):
    one mask for the whole batch (unions smaller than their layers) and masks varying per sample."""
    target = torchvision_target("resnet18")
    generator = (generator_with_sparsity(target.spec, 0.6) if fixed
                 else varied_generator(target.spec, sparsity_bias=-1.0))
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    eager = Explainer(target, generator, backend="eager").explain(x)
    if fixed:
        assert bool((eager.masks == eager.masks[:1]).all()) and float(eager.masks.float().mean()) < 0.5
    header, meta, body = _split(bundle_bytes(target, generator))
    policy = [{"name": "union", "measure": "union_kept_product", "limit": 1.0}]
    out = _open(_join(header, json.dumps({**meta, "conv_strategies": policy}), body)).explain(x)
    report = parity.compare(out, eager)
    assert report.ok, report.describe()


def test_union_runs_as_sparse_on_the_pixels_the_cxx_kernel_reads_in_place() -> None:
    """The executors' shared rule: union runs as sparse at one sample, and on CPU on as many output
    pixels as the C++ sparse kernel's in-place dot products serve (the session applies that bound)."""
    limit = bundle_format.UNION_AS_SPARSE_MAX_PIXELS["cpu"]
    assert limit == extension.EXTENSION.DOT_MAX_PIXELS  # type: ignore[union-attr]
    assert bundle_format.union_runs_as_sparse("cpu", 4, limit)
    assert not bundle_format.union_runs_as_sparse("cpu", 4, limit + 1)
    assert bundle_format.union_runs_as_sparse("cuda", 1, 4096)
    assert not bundle_format.union_runs_as_sparse("cuda", 2, 8)
