"""pathrt::pack_masks and pathrt::pairwise_iou: native kernels against hand examples and references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathrt import opspec
from pathrt.kernels import native as extension
from pathrt.runtime import ops
from tests.conftest import assert_python_ok


def test_native_kernels_are_registered_on_cpu() -> None:
    assert extension.EXTENSION is not None, extension.EXTENSION_ERROR
    assert extension.implementations() == {
        name: {"CPU": "native", "CUDA": "native" if extension.build_info()["cuda"] else "reference"}
        for name in opspec.OPS
    }


def test_pack_masks_hand_example() -> None:
    masks = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 1, 1], [0, 1, 1, 0, 0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    # sample 0: bits 0, 8, 9 -> byte0 = 1, byte1 = 0b11; sample 1: bits 1, 2, 7 -> 2 + 4 + 128
    expected = torch.tensor([[1, 3], [134, 0]], dtype=torch.uint8)
    assert torch.equal(ops.pack_masks(masks), expected)
    assert torch.equal(opspec.pack_masks_reference(masks), expected)


def test_pack_masks_uint8_nonzero_means_kept() -> None:
    masks = torch.tensor([[0, 7, 255, 1]], dtype=torch.uint8)
    assert torch.equal(ops.pack_masks(masks), torch.tensor([[14]], dtype=torch.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 8), (5, 9), (17, 608), (2, 1152), (0, 5), (3, 0)])
def test_pack_masks_matches_reference_and_roundtrips(shape: tuple[int, int]) -> None:
    masks = torch.rand(shape) > 0.5
    packed = ops.pack_masks(masks)
    assert packed.shape == (shape[0], (shape[1] + 7) // 8) and packed.dtype == torch.uint8
    assert torch.equal(packed, opspec.pack_masks_reference(masks))
    assert torch.equal(ops.unpack_masks(packed, shape[1]), masks)


def test_pack_masks_non_contiguous_input() -> None:
    base = torch.rand(40, 30) > 0.3
    view = base.T[:, ::2]  # (30, 20), strided
    assert not view.is_contiguous()
    assert torch.equal(ops.pack_masks(view), opspec.pack_masks_reference(view.contiguous()))


def test_pairwise_iou_hand_example() -> None:
    a = ops.pack_masks(torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))
    b = ops.pack_masks(torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool))
    expected = torch.tensor([[1 / 3, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(ops.pairwise_iou(a, b), expected, rtol=0, atol=0)
    torch.testing.assert_close(opspec.pairwise_iou_reference(a, b), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("n", "m", "k"), [(1, 1, 1), (5, 3, 9), (16, 16, 64), (7, 11, 608), (3, 2, 15104), (0, 4, 10)])
def test_pairwise_iou_matches_reference(n: int, m: int, k: int) -> None:
    a = ops.pack_masks(torch.rand(n, k) > 0.6)
    b = ops.pack_masks(torch.rand(m, k) > 0.4)
    out = ops.pairwise_iou(a, b)
    assert out.shape == (n, m) and out.dtype == torch.float32
    torch.testing.assert_close(out, opspec.pairwise_iou_reference(a, b), rtol=1e-6, atol=0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 9), m=st.integers(1, 9), k=st.integers(1, 200), p=st.floats(0.0, 1.0))
def test_ops_property_against_reference(n: int, m: int, k: int, p: float) -> None:
    g = torch.Generator().manual_seed(n * 1000 + m * 10 + k)
    a_masks = torch.rand(n, k, generator=g) < p
    b_masks = torch.rand(m, k, generator=g) < p
    a, b = ops.pack_masks(a_masks), ops.pack_masks(b_masks)
    assert torch.equal(a, opspec.pack_masks_reference(a_masks))
    iou = ops.pairwise_iou(a, b)
    torch.testing.assert_close(iou, opspec.pairwise_iou_reference(a, b), rtol=1e-6, atol=0)
    inter = (a_masks[:, None] & b_masks[None]).sum(-1).float()
    union = (a_masks[:, None] | b_masks[None]).sum(-1).float()
    torch.testing.assert_close(iou, torch.where(union == 0, 1.0, inter / union.clamp_min(1)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("fn", [ops.pack_masks, opspec.pack_masks_reference])
def test_pack_masks_errors(fn) -> None:
    with pytest.raises(TypeError, match="bool or uint8"):
        fn(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.zeros(2, 3, 4, dtype=torch.bool))


@pytest.mark.parametrize("fn", [ops.pairwise_iou, opspec.pairwise_iou_reference])
def test_pairwise_iou_errors(fn) -> None:
    with pytest.raises(TypeError, match="uint8"):
        fn(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="same number of bytes"):
        fn(torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.zeros(3, dtype=torch.uint8), torch.zeros(2, 3, dtype=torch.uint8))


def test_opcheck() -> None:
    masks = torch.rand(6, 21) > 0.5
    torch.library.opcheck(torch.ops.pathrt.pack_masks.default, (masks,))
    torch.library.opcheck(torch.ops.pathrt.pack_masks.default, (masks.to(torch.uint8),))
    a = ops.pack_masks(masks)
    b = ops.pack_masks(torch.rand(4, 21) > 0.5)
    torch.library.opcheck(torch.ops.pathrt.pairwise_iou.default, (a, b))


@pytest.mark.slow
def test_ops_under_torch_compile_fullgraph() -> None:
    def acceptance(scores: torch.Tensor) -> torch.Tensor:
        packed = torch.ops.pathrt.pack_masks(scores >= 0.5)
        return torch.ops.pathrt.pairwise_iou(packed, packed).mean(1)

    scores = torch.rand(8, 37)
    compiled = torch.compile(acceptance, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(scores), acceptance(scores))


def test_reference_fallback_without_extension() -> None:
    code = (
        "import warnings, torch\n"
        "from pathrt import opspec\n"
        "from pathrt.kernels import native as extension\n"
        "from pathrt.runtime import ops\n"
        "assert extension.EXTENSION is None\n"
        "assert all(v == {'CPU': 'reference', 'CUDA': 'reference'} for v in extension.implementations().values())\n"
        "m = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.bool)\n"
        "p = ops.pack_masks(m)\n"
        "assert p.tolist() == [[5], [0]], p\n"
        "assert ops.pairwise_iou(p, p).tolist() == [[1.0, 0.0], [0.0, 1.0]]\n"
    )
    assert_python_ok(code, env={"PATHRT_NO_EXTENSION": "1"})
