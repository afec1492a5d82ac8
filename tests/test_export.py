"""ONNX export: whole explainers and generators of real architectures, verified in ONNX Runtime; the
onnx backend; refusals and corrupted or mismatched files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from pathrt.errors import ArtifactError, IncompatibleArtifactError
from pathrt.export import ExportError, export_explainer, export_generator, load_onnx
from pathrt.generator import save_generator
from pathrt.runtime import Explainer
from pathrt.targets import Target, create_target, save_target
from tests.conftest import ROOT, assert_parity, torchvision_target, varied_generator


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["alexnet", "vgg11_bn", "resnet18", "embedded"])
def test_explainer_export_runs_in_onnxruntime(arch: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    target = request.getfixturevalue("embedded") if arch == "embedded" else torchvision_target(arch)
    generator = varied_generator(target.spec)
    report = export_explainer(target, generator, tmp_path / "explainer.onnx")  # verifies at batches 1 and 7
    assert report.verified_batches == [1, 7] and report.providers[-1] == "CPUExecutionProvider"
    assert max(report.max_rel_error.values()) <= 1e-4
    model = onnx.load(tmp_path / "explainer.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 18
    domains = {node.domain for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains  # stock ONNX ops only: no custom-op library needed
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["target_fingerprint"] == target.fingerprint and meta["threshold"] == "0.5"
    assert meta["pathrt_format"] == "pathrt-onnx-explainer" and "pathway_spec" in meta
    # one file, two batch sizes, through the onnx backend, against eager
    eager = Explainer(target, generator, backend="eager")
    onnx_explainer = Explainer(target, generator, backend="onnx", onnx_file=tmp_path / "explainer.onnx")
    assert onnx_explainer.backend == "onnx" and "CPUExecutionProvider" in onnx_explainer.backend_reason
    for batch in (1, 7):
        x = torch.randn(batch, *target.spec.input_shape, generator=torch.Generator().manual_seed(10 + batch))
        a, b = eager.explain(x), onnx_explainer.explain(x)
        assert b.backend == "onnx" and len(b) == batch
        assert_parity(a, b)


@pytest.mark.slow
def test_generator_export(embedded: Target, tmp_path: Path) -> None:
    generator = varied_generator(embedded.spec)
    report = export_generator(embedded, generator, tmp_path / "generator.onnx")
    assert report.kind == "generator" and report.verified_batches == [1, 7]
    loaded = load_onnx(tmp_path / "generator.onnx", target=embedded, kind="generator")
    assert [i.name for i in loaded.session.get_inputs()] == [f"features_{i + 1}" for i in range(5)]
    assert [o.name for o in loaded.session.get_outputs()] == ["scores", "masks", "kept"]


@pytest.mark.slow
def test_onnx_backend_in_memory_and_bad_files(embedded: Target, tmp_path: Path) -> None:
    generator = varied_generator(embedded.spec)
    explainer = Explainer(embedded, generator, backend="onnx")  # exported in memory
    assert "exported in memory" in explainer.backend_reason
    x = torch.randn(3, *embedded.spec.input_shape)
    assert_parity(Explainer(embedded, generator, backend="eager").explain(x), explainer.explain(x))
    with pytest.raises(ValueError, match=r"images must be \(N, 3, 32, 32\)"):
        explainer.explain(torch.randn(2, 3, 16, 16))

    path = tmp_path / "explainer.onnx"
    export_explainer(embedded, generator, path, verify=False)
    data = path.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="not a valid ONNX model"):
        load_onnx(tmp_path / "truncated.onnx")
    (tmp_path / "noise.onnx").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ArtifactError, match="not a valid ONNX model"):
        Explainer(embedded, generator, backend="onnx", onnx_file=tmp_path / "noise.onnx")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    other = create_target("small_vgg", 10, (3, 32, 32))
    with pytest.raises(IncompatibleArtifactError, match="other target weights"):
        load_onnx(path, target=other)
    with pytest.raises(IncompatibleArtifactError, match="another generator"):
        Explainer(embedded, varied_generator(embedded.spec, seed=1), backend="onnx", onnx_file=path)
    with pytest.raises(ArtifactError, match="not a pathrt generator ONNX file"):
        load_onnx(path, kind="generator")
    model = onnx.load(path)  # a valid ONNX file without pathrt metadata
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "plain.onnx")
    with pytest.raises(ArtifactError, match="not a pathrt explainer ONNX file"):
        load_onnx(tmp_path / "plain.onnx")


def test_export_refuses_what_cannot_be_exported(embedded: Target, tmp_path: Path) -> None:
    generator = varied_generator(embedded.spec)
    with pytest.raises(ExportError, match="pathway gradients need autograd"):
        export_explainer(embedded, generator, tmp_path / "e.onnx", outputs=["logits", "pathway_gradient"])
    with pytest.raises(ExportError, match="opset 17 is too old"):
        export_explainer(embedded, generator, tmp_path / "e.onnx", opset=17)
    assert not (tmp_path / "e.onnx").exists()  # nothing half-written


def test_verification_catches_a_graph_that_ignores_its_input(embedded: Target, tmp_path: Path) -> None:
    """A graph whose outputs do not depend on the images (as tracing can produce) must fail verification."""
    from onnx import TensorProto, helper

    from pathrt.export import ExportReport, finish_model, verify_explainer
    from pathrt.export.onnx_export import _metadata

    generator = varied_generator(embedded.spec)
    explainer = Explainer(embedded, generator, backend="eager")
    x = torch.randn(1, *embedded.spec.input_shape)
    want = explainer.explain(x)
    constants = {"logits": want.logits, "scores": want.scores, "masks": want.masks,
                 "pathway_logits": want.pathway_logits}
    nodes, outputs = [], []
    for name, value in constants.items():  # outputs = constants (batch 1), ignoring `images`
        tensor = onnx.numpy_helper.from_array(value.numpy(), name=f"{name}_value")
        nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        dtype = TensorProto.BOOL if value.dtype == torch.bool else TensorProto.FLOAT
        outputs.append(helper.make_tensor_value_info(name, dtype, list(value.shape)))
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 3, 32, 32])
    graph = helper.make_graph(nodes, "folded", [images], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    data = finish_model(model, _metadata("explainer", embedded.spec, embedded, generator, 18, list(constants)))
    with pytest.raises(ExportError, match="same for different inputs"):
        verify_explainer(data, embedded, generator, ExportReport("<bytes>", "explainer", 18, len(data), 0.0),
                         batches=(1,))


@pytest.mark.slow
def test_cli_export(embedded: Target, tmp_path: Path) -> None:
    generator = varied_generator(embedded.spec)
    save_target(embedded, tmp_path / "target")
    save_generator(generator, tmp_path / "generator", target_fingerprint=embedded.fingerprint)
    result = subprocess.run([sys.executable, "-m", "pathrt.cli", "export", "--target", str(tmp_path / "target"),
                             "--generator", str(tmp_path / "generator"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verified in ONNX Runtime" in result.stdout
    assert (tmp_path / "out" / "explainer.onnx").is_file() and (tmp_path / "out" / "generator.onnx").is_file()
    refused = subprocess.run([sys.executable, "-m", "pathrt.cli", "export", "--target", str(tmp_path / "target"),
                              "--generator", str(tmp_path / "generator"), "--out", str(tmp_path / "o2"),
                              "--outputs", "pathway_gradient"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert refused.returncode == 5 and "pathway gradients need autograd" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_fp16_explainer_export(embedded: Target, tmp_path: Path) -> None:
    """The float16 variant: half the weights' bytes, verified to its looser tolerance, usable as a backend."""
    generator = varied_generator(embedded.spec)
    full = export_explainer(embedded, generator, tmp_path / "e32.onnx", verify=False)
    half = export_explainer(embedded, generator, tmp_path / "e16.onnx", fp16=True)
    assert half.verified_batches == [1, 7] and max(half.max_rel_error.values()) <= 2e-2
    assert half.bytes < 0.7 * full.bytes
    loaded = load_onnx(tmp_path / "e16.onnx", target=embedded)
    assert loaded.metadata["dtype"] == "float16" and loaded.session.get_inputs()[0].type == "tensor(float16)"
    explainer = Explainer(embedded, generator, backend="onnx", onnx_file=tmp_path / "e16.onnx")
    x = torch.randn(5, *embedded.spec.input_shape)
    got, want = explainer.explain(x), Explainer(embedded, generator, backend="eager").explain(x)
    assert got.logits.dtype == torch.float32 and got.masks.dtype == torch.bool
    torch.testing.assert_close(got.logits, want.logits, rtol=2e-2, atol=2e-2 * float(want.logits.abs().max()))
    assert not ((got.masks != want.masks) & ((want.scores - 0.5).abs() > 1e-2)).any()


def test_modified_onnx_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue-21 gap: one flipped bit in the weights used to load and explain wrongly. The digest in
    the metadata covers every initializer and Constant value; data kept outside the file is refused."""
    import random

    from tests.fuzz.harnesses import tiny_models

    target, generator = tiny_models()
    path = tmp_path / "explainer.onnx"
    export_explainer(target, generator, path)  # verified: the untouched file loads and matches eager
    data = path.read_bytes()
    model = onnx.load_from_string(data)
    rng = random.Random(21)
    weights = [t for t in model.graph.initializer if len(t.raw_data) >= 16]
    assert weights
    for t in rng.sample(weights, min(4, len(weights))):
        at = data.index(t.raw_data) + rng.randrange(len(t.raw_data))
        flipped = bytearray(data)
        flipped[at] ^= 1 << rng.randrange(8)
        (tmp_path / "flipped.onnx").write_bytes(flipped)
        with pytest.raises(ArtifactError, match="modified after export"):
            load_onnx(tmp_path / "flipped.onnx", target=target)
        with pytest.raises(ArtifactError, match="modified after export"):
            Explainer(target, generator, backend="onnx", onnx_file=tmp_path / "flipped.onnx")
    zeroed = onnx.load_from_string(data)  # a weight replaced by zeros, re-serialized as valid protobuf
    zeroed.graph.initializer[0].raw_data = bytes(len(zeroed.graph.initializer[0].raw_data))
    added = onnx.load_from_string(data)  # a tensor added as a Constant node's value
    added.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["extra"], value=onnx.numpy_helper.from_array(
        torch.ones(3).numpy(), "extra")))
    for edited in (zeroed, added):
        with pytest.raises(ArtifactError, match="modified after export"):
            load_onnx(edited.SerializeToString())
    external = onnx.load_from_string(data)  # a weight read from a file beside it (the checker accepts that)
    t = external.graph.initializer[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.bin").write_bytes(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    with pytest.raises(ArtifactError, match="outside the file"):
        load_onnx(external.SerializeToString())
