"""The bundle and the C++ ExplainSession: parity with eager on every supported architecture,
threads, input validation, hostile bundle files, the CLI and the Explainer backend."""

from __future__ import annotations

import contextlib
import json
import struct
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from pathrt import bundle_format, wrap_model
from pathrt.cli import main as cli_main
from pathrt.errors import ArtifactError, BundleError, IncompatibleArtifactError, InputError
from pathrt.generator import save_generator
from pathrt.kernels import native as extension
from pathrt.runtime import Explainer, ops
from pathrt.runtime.bundle import bundle_bytes, read_bundle_meta, write_bundle
from pathrt.targets import save_target
from tests.conftest import assert_parity, assert_python_ok, torchvision_target, varied_generator

pytestmark = pytest.mark.skipif(extension.EXTENSION is None, reason="needs the compiled extension")


def _session_class():
    return extension.EXTENSION.ExplainSession  # type: ignore[union-attr]


@pytest.mark.parametrize("arch", ["alexnet", "vgg11_bn", "resnet18"])
@pytest.mark.parametrize("bias", [0.0, -2.5])  # about half kept, and sparse enough for the per-sample convs
def test_session_matches_eager_on_torchvision(arch: str, bias: float) -> None:
    target = torchvision_target(arch)
    generator = varied_generator(target.spec, sparsity_bias=bias)
    x = torch.randn(5, 3, 64, 64)
    eager = Explainer(target, generator, backend="eager")
    # chunks of 4 and 1: 4 images give ResNet-18's 2x2 convs the 16 rows of the batched GEMM conv; 1 to 3
    # images take pathway_conv2d's dot products for them (dot_conv_pays), union convs run as sparse
    session = Explainer(target, generator, backend="session", max_batch_size=4)
    assert session.backend == "session"
    assert_parity(eager.explain(x), session.explain(x))
    assert_parity(eager.explain(x[:3]), session.explain(x[:3]))


def test_session_gemm_conv_over_kernel_windows_matches_eager() -> None:
    """At 32 images ResNet-18's 2x2 convs (stride 1 and 2) run one GEMM per kernel window inside the
    input, skipping the padding's taps (gemm_conv2d, kMinWindowImages), in the plain pass and the union convs."""
    target = torchvision_target("resnet18")
    generator = varied_generator(target.spec, sparsity_bias=0.0)
    x = torch.randn(32, 3, 64, 64)
    assert_parity(Explainer(target, generator, backend="eager").explain(x),
                  Explainer(target, generator, backend="session").explain(x))


@pytest.mark.parametrize("bias", [0.0, -2.0])
def test_session_matches_eager_on_embedded(embedded, bias: float) -> None:
    from pathrt.data import load_digits

    generator = varied_generator(embedded.spec, sparsity_bias=bias)
    images = load_digits("test")
    x = embedded.preprocess(torch.stack([images[i][0] for i in range(32)]))
    assert_parity(Explainer(embedded, generator, backend="eager").explain(x),
                  Explainer(embedded, generator, backend="session").explain(x))


def test_session_packs_conv_weights_per_batch_shape(embedded) -> None:
    """The session's oneDNN convs pack each weight for the input shape they run on, keeping the last 8
    (csrc/include/pathrt/packed_conv.h): ten batch sizes, then two of the evicted ones again, each
    equal to eager."""
    from pathrt.data import load_digits

    generator = varied_generator(embedded.spec)
    eager = Explainer(embedded, generator, backend="eager")
    session = Explainer(embedded, generator, backend="session")
    x = embedded.preprocess(load_digits("test").images[:10])
    for n in [*range(1, 11), 1, 2]:
        assert_parity(eager.explain(x[:n]), session.explain(x[:n]))


def test_session_reuses_large_buffers_across_calls(embedded) -> None:
    """A session call's activations of 16 MB or more take blocks freed by earlier calls instead of fresh
    pages (pathrt/buffer_pool.h): a second call of the same batch allocates nothing new and gives the
    same results, allocations outside a call never enter the pool, and blocks that the last two calls
    did not use go back to the system."""
    from pathrt.data import load_digits

    pool = extension.EXTENSION.buffer_pool  # type: ignore[union-attr]
    generator = varied_generator(embedded.spec)
    session = Explainer(embedded, generator, backend="session")
    images = load_digits("test").images
    big = embedded.preprocess(images[:160])  # the first conv's output: 160 x 32 x 32 x 32 floats, 21 MB
    first = session.explain(big)
    after_first = pool()
    assert after_first["installed"] and after_first["blocks"] > 0
    assert after_first["free_bytes"] == after_first["held_bytes"]  # nothing pooled outlives the call
    second = session.explain(big)
    assert pool()["held_bytes"] == after_first["held_bytes"]
    assert torch.equal(first.logits, second.logits) and torch.equal(first.masks, second.masks)
    assert_parity(Explainer(embedded, generator, backend="eager").explain(big), second)
    outside = torch.empty(64 << 20, dtype=torch.uint8)
    assert pool()["held_bytes"] == after_first["held_bytes"] and outside.numel() > 0
    small = embedded.preprocess(images[:4])
    session.explain(small)
    assert pool()["held_bytes"] == after_first["held_bytes"]  # the last call before this one used them
    session.explain(small)
    assert pool()["held_bytes"] == 0


@pytest.mark.parametrize("level", [None, "avx2", "baseline"])
def test_session_small_batch_generator_on_odd_sizes(level: str | None) -> None:
    """The session's small-batch generator (csrc/include/pathrt/small_generator.h: batches up to 8 run
    through packed 16-wide weight panels in blocks of 6 rows) on sizes that fill no panel or block: 5 and
    10 channels, d_r = 7, d = 18 over 3 heads. Batches 1-3 and 8 take that path, 9 the ATen one; every
    batch equals eager. Its panel kernel is built for AVX-512, AVX2 and the baseline: PATHRT_CPU_KERNELS
    caps the choice, so the lower builds run here too (in a fresh interpreter)."""
    if level is None:
        _small_generator_equals_eager()
    else:
        assert_python_ok("from tests.test_session import _small_generator_equals_eager\n"
                         "_small_generator_equals_eager()", env={"PATHRT_CPU_KERNELS": level})


def _small_generator_equals_eager() -> None:
    from pathrt.generator import GeneratorConfig, PathwayGenerator
    from tests.user_models import random_tiny_net

    target = wrap_model(random_tiny_net(width=5), (3, 32, 32), ["a", "b", "c", "d"])
    torch.manual_seed(0)
    generator = PathwayGenerator(target.spec, GeneratorConfig(d=18, d_r=7, heads=3, depth=1, head_bias=0.0)).eval()
    with torch.no_grad():
        for head in generator.rpd.heads:
            head[-1].weight.mul_(20.0)
    eager = Explainer(target, generator, backend="eager")
    session = Explainer(target, generator, backend="session")
    x = torch.randn(9, 3, 32, 32)
    for n in (1, 2, 3, 8, 9):
        expected, got = eager.explain(x[:n]), session.explain(x[:n])
        assert 0 < int(got.masks.sum()) < got.masks.numel()  # masks that keep some neurons, not all
        assert_parity(expected, got)


def test_session_runs_the_classifier_once_for_both_passes() -> None:
    """The joint tail (csrc/runtime/session.cpp, Impl::joint_from): the steps after the last pathway layer
    read one value both passes make, so they run once on both passes' values stacked. VGG-11's three
    linears run 3 times per call on 2N rows, not 6 times on N, and both passes' logits equal eager's. At
    N = 9 (18 rows) they run on at::linear; up to 16 rows (N = 8, and N = 3: 6 rows, not a whole register
    block of rows) on few_rows_linear_cpu, over the weights read in place."""
    target = torchvision_target("vgg11_bn")
    for m in target.model.modules():  # torchvision starts them at zero
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.bias, std=0.5, generator=torch.Generator().manual_seed(0))
    generator = varied_generator(target.spec)
    eager = Explainer(target, generator, backend="eager")
    session = Explainer(target, generator, backend="session")
    x = torch.randn(9, 3, 64, 64)
    for n, linears in [(9, [18, 18, 18]), (8, []), (3, [])]:
        session.explain(x[:n])
        with torch.profiler.profile(record_shapes=True) as prof:
            got = session.explain(x[:n])
        assert [e.input_shapes[0][0] for e in prof.events() if e.name == "aten::linear"] == linears
        assert_parity(eager.explain(x[:n]), got)


def test_session_small_linears_on_few_rows() -> None:
    """Linear steps whose weight has at most 1M values run through SmallLinear's packed weight on up to 16
    rows (Step::small in csrc/runtime/session.cpp): ResNet-18's 512 -> 1000 classifier on the joint tail's
    2N rows at N = 8, at::linear at N = 9; both equal eager. Its global average pool is the session's
    (pathrt/pool.h) at every batch."""
    target = torchvision_target("resnet18")
    generator = varied_generator(target.spec, sparsity_bias=-1.0)
    eager = Explainer(target, generator, backend="eager")
    session = Explainer(target, generator, backend="session")
    x = torch.randn(9, 3, 64, 64)
    for n, linears in [(8, []), (9, [18])]:
        session.explain(x[:n])
        with torch.profiler.profile(record_shapes=True) as prof:
            got = session.explain(x[:n])
        names = [e.name for e in prof.events()]
        assert [e.input_shapes[0][0] for e in prof.events() if e.name == "aten::linear"] == linears
        assert "aten::adaptive_avg_pool2d" not in names
        assert_parity(eager.explain(x[:n]), got)


@pytest.fixture(scope="module")
def resnet_bundle(tmp_path_factory: pytest.TempPathFactory):
    target = torchvision_target("resnet18")
    generator = varied_generator(target.spec, sparsity_bias=-1.0)
    path = write_bundle(target, generator, tmp_path_factory.mktemp("bundle") / "resnet18.bundle")
    return target, generator, path


def test_session_outputs_and_layouts(resnet_bundle) -> None:
    _, _, path = resnet_bundle
    session = _session_class()(str(path), num_threads=1)
    assert session.input_shape == [3, 64, 64] and session.num_threads == 1 and session.arch == "resnet18"
    x = torch.randn(4, 3, 64, 64)
    out = session.explain(x)
    assert set(out) == {"logits", "scores", "masks", "packed", "counts", "pathway_logits", "classes", "Y", "O",
                        "timings"}
    generator_phases = {"generator.rfe_convs_us", "generator.rfe_tail_us", "generator.encoder_us",
                        "generator.decoder_us"}
    assert set(out["timings"]) == {"plain_ms", "generator_ms", "pathway_ms", *generator_phases, "threads"}
    assert all(v > 0 for v in out["timings"].values()) and out["timings"]["threads"] == 1
    # the generator's phases are its parts: together within its own wall time
    assert sum(out["timings"][k] for k in generator_phases) <= 1e3 * out["timings"]["generator_ms"]
    assert torch.equal(out["packed"], ops.pack_masks(out["masks"])) and torch.equal(out["counts"], out["masks"].sum(1))
    assert torch.equal(out["classes"], out["logits"].argmax(1))
    torch.testing.assert_close(out["Y"], out["logits"].softmax(1).gather(1, out["classes"][:, None]).squeeze(1))
    torch.testing.assert_close(out["O"], out["pathway_logits"].softmax(1).gather(1, out["classes"][:, None]).squeeze(1))
    for variant in (x.contiguous(memory_format=torch.channels_last), torch.randn(4, 3, 64, 128)[..., ::2]):
        got, want = session.explain(variant), session.explain(variant.contiguous())
        assert torch.equal(got["masks"], want["masks"])
        torch.testing.assert_close(got["pathway_logits"], want["pathway_logits"], rtol=1e-5, atol=1e-5)


def test_four_threads_share_one_session(resnet_bundle) -> None:
    _, _, path = resnet_bundle
    session = _session_class()(str(path))
    batches = [torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    serial = [session.explain(x) for x in batches]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(worker, len(batches), 4):
                results[i] = session.explain(batches[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == len(batches)
    for i, want in enumerate(serial):
        for key, value in want.items():
            if key != "timings":
                assert torch.equal(results[i][key], value), (i, key)


def test_session_casts_float_images_and_refuses_bad_arguments(resnet_bundle) -> None:
    """float64 images give the float32 result (as in the Python API; the bad-image table is in
    test_reliability); the C++ errors are pathrt.errors classes."""
    _, _, path = resnet_bundle
    session = _session_class()(str(path))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    got, want = session.explain(x.double()), session.explain(x)
    assert all(torch.equal(got[k], want[k]) for k in want if k != "timings")
    with pytest.raises(InputError, match="num_threads"):
        _session_class()(str(path), -1)


def _corrupt(tmp_path: Path, data: bytes, name: str) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_session_refuses_hostile_bundles(resnet_bundle, tmp_path: Path) -> None:
    _, _, path = resnet_bundle
    good = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", good[:8])
    header = good[8:8 + header_len]
    cases = {
        "missing": (None, "cannot open"),
        "empty": (b"", "too short"),
        "huge-header": (struct.pack("<Q", 1 << 40) + good[8:], "header length"),
        "truncated": (good[: 8 + header_len + 100], "data_offsets|bytes"),
        "bad-json": (good[:8] + b"{" + header[1:-1] + b"," + good[8 + header_len:], "not valid JSON"),
        "version": (None, "format_version"),
        "offsets": (None, "data_offsets|bytes"),
    }
    for name, (data, message) in cases.items():
        if name == "version":
            version = f'\\"format_version\\": {bundle_format.VERSION}'.encode()
            text = header.replace(version, b'\\"format_version\\": 7')
            assert text != header
            data = struct.pack("<Q", len(text)) + text + good[8 + header_len:]
        if name == "offsets":
            text = header.replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1)
            assert text != header
            data = good[:8] + text + good[8 + header_len:]
        file = str(tmp_path / "nope") if data is None else _corrupt(tmp_path, data, name)
        with pytest.raises(BundleError, match=message):
            _session_class()(file)
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(BundleError, match="without a pathrt plan"):
        _session_class()(str(plain))
    with pytest.raises(BundleError, match="not a pathrt bundle"):
        read_bundle_meta(plain)


def test_session_refuses_modified_tensors(resnet_bundle, tmp_path: Path) -> None:
    """One flipped byte anywhere in the weights is refused by the digest (the issue-21 gap: it used
    to load and explain wrongly), and every C++ load error is a pathrt.errors.ArtifactError."""
    import pickle
    import random

    _, _, path = resnet_bundle
    good = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", good[:8])
    rng = random.Random(21)
    for offset in [8 + header_len, len(good) - 1, *(rng.randrange(8 + header_len, len(good)) for _ in range(6))]:
        data = bytearray(good)
        data[offset] ^= 1 << rng.randrange(8)
        with pytest.raises(BundleError, match="modified after it was written"):
            _session_class().from_bytes(bytes(data), "flipped")
    header = json.loads(good[8:8 + header_len])
    entries = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])
    first, second = next((a, b) for a in entries for b in entries
                         if a < b and header[a]["shape"] == header[b]["shape"] and header[a]["shape"])
    header[first]["data_offsets"], header[second]["data_offsets"] = (header[second]["data_offsets"],
                                                                     header[first]["data_offsets"])
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (header_len - len(text))
    assert len(text) == header_len  # the swapped offsets fit the original header's space
    with pytest.raises(BundleError, match="modified after it was written"):
        _session_class().from_bytes(struct.pack("<Q", header_len) + text + good[8 + header_len:], "swapped")
    pickled = tmp_path / "evil.bundle"
    pickled.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    huge = dict(header, __metadata__=dict(header["__metadata__"]))
    meta = json.loads(huge["__metadata__"]["pathrt"])
    meta["input_shape"] = [3, 1 << 20, 1 << 20]
    huge["__metadata__"]["pathrt"] = json.dumps(meta)
    huge_text = json.dumps(huge).encode()
    for data in (pickled.read_bytes(), good[: len(good) // 2], struct.pack("<Q", len(huge_text)) + huge_text
                 + good[8 + header_len:]):
        with pytest.raises(ArtifactError):
            _session_class().from_bytes(data, "hostile")


def test_bundle_refuses_unsupported_models() -> None:
    target = torchvision_target("alexnet")
    generator = varied_generator(target.spec)
    target.model.features[1] = nn.PReLU()  # the ReLU after the first conv: an activation with weights
    with pytest.raises(BundleError, match=r"'features.1' \(PReLU\) is not supported.*still works with backend='eager'"):
        bundle_bytes(target, generator)


def test_auto_prefers_session_and_bundle_file_must_match(resnet_bundle, tmp_path: Path) -> None:
    target, generator, path = resnet_bundle
    explainer = Explainer(target, generator)
    assert explainer.backend == "session" and explainer.backend_reason.startswith("auto: C++ ExplainSession")
    from_file = Explainer(target, generator, backend="session", bundle_file=path)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(from_file.explain(x).masks, explainer.explain(x).masks)
    other = varied_generator(target.spec, seed=5)
    with pytest.raises(IncompatibleArtifactError, match="another generator"):
        Explainer(target, other, backend="session", bundle_file=path)
    with pytest.raises(InputError, match="bundle_file is only used"):
        Explainer(target, generator, backend="native", bundle_file=path)
    masks = explainer.explain(x).masks  # explain_with_masks runs on the native plan
    assert_parity(Explainer(target, generator, backend="eager").explain_with_masks(x, masks),
                  explainer.explain_with_masks(x, masks))


def test_cli_bundle(embedded, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_target(embedded, tmp_path / "target")
    save_generator(varied_generator(embedded.spec), tmp_path / "generator", embedded.fingerprint)
    out = tmp_path / "model.bundle"
    assert cli_main(["bundle", "--target", str(tmp_path / "target"), "--generator", str(tmp_path / "generator"),
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "verified: the C++ session matches eager on 8 images" in text
    meta = read_bundle_meta(out)
    assert meta["target_fingerprint"] == embedded.fingerprint and meta["format_version"] == bundle_format.VERSION


def test_mutated_bundles_load_or_fail_cleanly(tmp_path: Path) -> None:
    """Seeded random corruptions of a small bundle (bytes flipped in the header and data, digits
    changed, truncations): each either loads, and then explains, or raises BundleError;
    none crashes the process or reads outside the buffer (run under ASan by issue 8's sanitizer job)."""
    import random

    from pathrt.generator import GeneratorConfig, PathwayGenerator
    from pathrt.targets import create_target

    target = create_target("small_vgg", 4, (3, 16, 16), cfg=(4, "M", 8, 8, "M"), hidden=8)
    good = bundle_bytes(target, PathwayGenerator(target.spec, GeneratorConfig.small()).eval())
    (header_len,) = struct.unpack("<Q", good[:8])
    rng = random.Random(0)
    outcomes = {"loaded": 0, "refused": 0}
    x = torch.randn(2, 3, 16, 16)
    for trial in range(400):
        data = bytearray(good)
        kind = trial % 4
        if kind == 0:  # flip bytes of the header (JSON and the plan inside it)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(8, 8 + header_len)] = rng.randrange(256)
        elif kind == 1:  # change a digit of the header: shapes, offsets, attributes, value ids
            digits = [i for i in range(8, 8 + header_len) if chr(data[i]).isdigit()]
            data[rng.choice(digits)] = ord(str(rng.randrange(10)))
        elif kind == 2:  # truncate anywhere
            data = data[: rng.randrange(len(data))]
        else:  # corrupt the length prefix
            data[rng.randrange(8)] = rng.randrange(256)
        try:
            session = _session_class().from_bytes(bytes(data), f"mutant {trial}")
        except BundleError:
            outcomes["refused"] += 1
            continue
        with contextlib.suppress(ValueError, TypeError, RuntimeError):  # a mutant may load with other weights
            session.explain(x)
        outcomes["loaded"] += 1
    assert outcomes["refused"] > 200 and outcomes["loaded"] > 20, outcomes
