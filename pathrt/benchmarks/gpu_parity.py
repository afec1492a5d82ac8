"""Op parity for `make gpu-check` and the `gpu` tests: every op of pathrt._C on a device and every
Triton kernel against its reference (`pathrt.opspec`, plain PyTorch) run on CPU copies of the inputs.
The references take float32, as the ops do, so they run in float32 on the CPU: ~1e-7 from float64 on
these shapes (`F.conv2d` in float64: 8e-8), far inside the limits, and never with a GPU's TF32. (The
first GPU run found them running on the device: a tuple of arguments passed through the CPU copy
unconverted, and cuDNN's TF32 conv put the reference 3e-4 off at batch 64 while the CUDA and Triton
kernels were 8e-8 from float64.)

Each case draws fresh random inputs (never zeros), uses odd shapes that are no multiple of a block
size, batches 1, 3, 64 and 257, and masks all-0, all-1 or random with keep 0.05, 0.5, 0.95.
Before each launch the device's caching allocator is poisoned (blocks of every output's size are
filled with 0xFF, a float NaN, and freed, so the op's own outputs reuse them): an output element
the kernel never writes shows up as NaN or as wrong bits. Removed input channels of a conv hold NaN
(a kernel that reads them fails). Every case runs twice and must give bitwise-equal results (a
difference means a race). Two cases pass 2^31 mask bits (32-bit index and grid overflow).
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pathrt import opspec
from pathrt.runtime import ops

BATCHES = (1, 3, 64, 257)
MASK_KINDS = ("all0", "all1", "keep0.05", "keep0.5", "keep0.95")
NATIVE_OPS = ("pack_masks", "pairwise_iou", "daq_threshold_pack", "masked_bias_relu", "masked_bias_relu_",
              "pathway_conv2d", "rfe_tail", "pdn_encoder_layer", "rpd_decode")
TRITON_OPS = ("daq_threshold_pack", "masked_bias_relu", "masked_bias_relu_", "pathway_conv2d", "rfe_tail",
              "pdn_encoder_layer", "rpd_decode")
# relative error limits against the CPU reference (max |got - want| / max |want|): elementwise ops round once,
# convs and the generator's GEMMs, layer norms and softmax accumulate float32 sums
LIMITS = {"pack_masks": 0.0, "pairwise_iou": 1e-6, "daq_threshold_pack": 1e-6, "masked_bias_relu": 1e-6,
          "masked_bias_relu_": 1e-6, "pathway_conv2d": 1e-5, "rfe_tail": 1e-4, "pdn_encoder_layer": 1e-4,
          "rpd_decode": 1e-4}
CONVS = (  # (c_in, c_out, h, w, kernel, stride, padding, residual, relu)
    (13, 11, 9, 9, 3, 1, 1, True, True),
    (6, 17, 10, 7, 1, 2, 0, False, True),
    (5, 7, 11, 11, 5, 2, 2, True, False),
)


@dataclass
class Case:
    """One launch: an op, its float32 inputs on the device, and a name saying what they are."""

    op: str
    name: str
    batch: int
    args: tuple


@dataclass
class CaseResult:
    impl: str
    device: str
    op: str
    case: str
    batch: int
    error: float
    limit: float
    written: bool
    repeatable: bool
    problem: str
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problem


def triton_usable(device: torch.device) -> str | None:
    """None when the Triton kernels can launch on `device`, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "Triton kernels need a CUDA device, or TRITON_INTERPRET=1 on the CPU"


def implementations(device: torch.device) -> dict[str, dict[str, Callable]]:
    """The op tables to check on `device`: "native" (torch.ops.pathrt) and "triton" where usable."""
    native = {name: getattr(ops, name) for name in NATIVE_OPS if not name.startswith("masked_bias_relu")}
    native["masked_bias_relu"] = lambda x, b, m, f: ops.masked_bias_relu(x, b, m, fill=f)
    native["masked_bias_relu_"] = lambda x, b, m, f: ops.masked_bias_relu(x, b, m, inplace=True, fill=f)
    out: dict[str, dict[str, Callable]] = {"native": native}
    if triton_usable(device) is None:
        from pathrt.kernels import triton_fused, triton_generator

        out["triton"] = {"daq_threshold_pack": triton_fused.daq_threshold_pack,
                         "masked_bias_relu": lambda x, b, m, f: triton_fused.masked_bias_relu(x, b, m, fill=f),
                         "masked_bias_relu_": lambda x, b, m, f: triton_fused.masked_bias_relu(x, b, m, inplace=True,
                                                                                               fill=f),
                         "pathway_conv2d": triton_fused.pathway_conv2d, "rfe_tail": triton_generator.rfe_tail,
                         "pdn_encoder_layer": triton_generator.pdn_encoder_layer,
                         "rpd_decode": triton_generator.rpd_decode}
    return out


def _mask(kind: str, n: int, c: int, g: torch.Generator) -> torch.Tensor:
    if kind == "all0":
        return torch.zeros(n, c, dtype=torch.bool)
    if kind == "all1":
        return torch.ones(n, c, dtype=torch.bool)
    return torch.rand(n, c, generator=g) < float(kind.removeprefix("keep"))


def _nonzero(shape: tuple[int, ...], g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Random values bounded away from 0 (a kernel that leaves zeros cannot pass by luck)."""
    x = torch.randn(shape, generator=g)
    return scale * (x + torch.where(x >= 0, 0.1, -0.1))


def _params(shapes: list[tuple[int, ...]], g: torch.Generator) -> list[torch.Tensor]:
    return [_nonzero(s, g, 1 / (s[-1] ** 0.5 if len(s) == 2 else 4.0)) for s in shapes]


def cases(device: torch.device, op_names: tuple[str, ...], batches: tuple[int, ...] = BATCHES,
          kinds: tuple[str, ...] = MASK_KINDS) -> Iterator[Case]:
    """The cases of every op in `op_names`, seeded, inputs on `device`."""
    seed = 0
    for op in op_names:
        for batch in batches:
            for index, kind in enumerate(kinds if op not in ("daq_threshold_pack", "rfe_tail", "pdn_encoder_layer",
                                                              "rpd_decode") else ("-",)):
                seed += 1
                g = torch.Generator().manual_seed(seed)
                for name, args in _make(op, batch, kind, index, g):
                    moved = tuple([a.to(device) for a in v] if isinstance(v, list) else
                                  v.to(device) if isinstance(v, torch.Tensor) else v for v in args)
                    yield Case(op, name, batch, moved)


def _make(op: str, n: int, kind: str, index: int, g: torch.Generator) -> Iterator[tuple[str, tuple]]:
    if op == "pack_masks":
        k = (37, 300, 1, 1029, 8)[index]
        yield f"K={k} {kind}", (_mask(kind, n, k, g),)
    elif op == "pairwise_iou":
        k = (301, 37, 9, 1029, 64)[index]
        a, b = _mask(kind, n, k, g), _mask(kind, 5, k, g)
        b[0] = a[0]  # one exact match, and (for all0) empty-vs-empty = 1
        yield f"K={k} {kind}", (opspec.pack_masks_reference(a), opspec.pack_masks_reference(b))
    elif op == "daq_threshold_pack":
        logits = _nonzero((n, 301), g, 3.0)
        logits.view(-1)[::7] = 0.0  # sigmoid(0) = 0.5: kept, exactly at the threshold
        yield "K=301", (logits,)
    elif op in ("masked_bias_relu", "masked_bias_relu_"):
        for bias, fill in ((True, False), (False, False), (True, True)):  # fill: mean ablation's removed value
            x = _nonzero((n, 13, 7, 9), g)
            yield f"13x7x9 {kind} bias={bias} fill={fill}", (x, _nonzero((13,), g) if bias else None,
                                                           _mask(kind, n, 13, g), _nonzero((13,), g) if fill else None)
    elif op == "pathway_conv2d":
        for c_in, c_out, h, w, k, s, p, residual, relu in CONVS:
            in_mask, out_mask = _mask(kind, n, c_in, g), _mask(kind, n, c_out, g)
            x = torch.where(in_mask[:, :, None, None], _nonzero((n, c_in, h, w), g), float("nan"))
            ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            res = _nonzero((n, c_out, ho, wo), g) if residual else None
            yield (f"{c_in}->{c_out} {h}x{w} k{k}s{s}p{p} res={residual} relu={relu} {kind}",
                   (x, _nonzero((c_out, c_in, k, k), g, 0.3), _nonzero((c_out,), g), res, in_mask, out_mask,
                    (s, s), (p, p), relu))
    elif op == "rfe_tail":
        d_r, d = 8, 16
        maps = [_nonzero((n, d_r, 2, 2), g), _nonzero((n, d_r, 3, 5), g)]
        yield "2 layers d_r=8 d=16", (maps, *_params([(d,), (d, d_r), (d,), (d,), (d,), (2, d)], g), 1e-5)
    elif op == "pdn_encoder_layer":
        t, d, heads = 6, 16, 4
        params = _params([(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (2 * d, d), (2 * d,),
                          (d, 2 * d), (d,)], g)
        yield "T=6 d=16 heads=4", (_nonzero((n, t, d), g), params, heads, 1e-5)
    elif op == "rpd_decode":
        d, channels = 16, (5, 9, 12)
        params = _params([(d,), (d,), (3 * d, d), (3 * d, d), (3 * d,), (3 * d,)], g)
        heads = [p for c in channels for p in _params([(d, d), (d,), (c, d), (c,)], g)]
        yield "d=16 heads 5,9,12", (_nonzero((n, len(channels) + 1, d), g), params, heads, 1e-5)
    else:
        raise ValueError(f"no parity cases for op {op!r}")


def _cpu(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return type(value)(_cpu(v) for v in value)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return torch.nan_to_num(value, nan=0.0) if value.is_floating_point() else value.clone()
    return value


def reference(case: Case) -> tuple[torch.Tensor, ...]:
    """The op's reference (`pathrt.opspec`) on CPU copies of the inputs (NaN read as 0)."""
    args = _cpu(case.args)
    if case.op == "masked_bias_relu_":
        return (opspec.masked_bias_relu_reference(*args),)
    out = opspec.library.OPS[case.op].reference(*args)
    return out if isinstance(out, tuple) else (out,)


def _device(case: Case) -> torch.device:
    first = case.args[0]
    return first.device if isinstance(first, torch.Tensor) else first[0].device


def launch(fn: Callable, case: Case) -> tuple[torch.Tensor, ...]:
    args = tuple([a.clone() for a in v] if isinstance(v, list) else v.clone() if isinstance(v, torch.Tensor) else v
                 for v in case.args)
    out = fn(*args)
    if case.op == "masked_bias_relu_":
        out = args[0]
    if _device(case).type == "cuda":
        torch.cuda.synchronize()  # raises the launch's error here, not in a later case
    return out if isinstance(out, tuple) else (out,)


def _poison(device: torch.device, like: tuple[torch.Tensor, ...]) -> None:
    """Fills and frees device blocks of every output's size with 0xFF, so fresh outputs reuse them."""
    if device.type == "cuda":
        blocks = [torch.full((t.numel() * t.element_size() + 512,), 0xFF, dtype=torch.uint8, device=device)
                  for t in like]
        del blocks


def _problems(case: Case, got: tuple[torch.Tensor, ...],
              want: tuple[torch.Tensor, ...]) -> tuple[float, bool, list[str]]:
    """(largest relative float error, every float output finite, what is wrong) of one launch."""
    got = tuple(t.detach().cpu() for t in got)
    problems: list[str] = []
    error, written = 0.0, True
    if case.op == "pack_masks":
        if not torch.equal(got[0], want[0]):
            problems.append(f"{int((got[0] != want[0]).any(1).sum())} rows of packed bits differ")
        return error, written, problems
    floats = {"daq_threshold_pack": (0,), "rpd_decode": (0, 1)}.get(case.op, range(len(want)))
    for i in floats:
        error = max(error, opspec.parity.relative_error(got[i], want[i]))
        if not bool(torch.isfinite(got[i]).all()):
            written = False
            problems.append(f"output {i} has NaN/inf (an element never written, or a removed input read)")
    if case.op in ("daq_threshold_pack", "rpd_decode"):
        masks, packed, counts = got[1:4] if case.op == "daq_threshold_pack" else got[2:5]
        want_scores = want[0] if case.op == "daq_threshold_pack" else want[1]
        differ = masks.bool() != (want_scores >= opspec.MASK_THRESHOLD)
        near = (want_scores - opspec.MASK_THRESHOLD).abs() <= opspec.parity.MASK_BAND
        if bool((differ & ~near).any()):
            problems.append(f"{int((differ & ~near).sum())} mask bits differ outside the threshold band")
        if not torch.equal(packed, opspec.pack_masks_reference(masks)) or not torch.equal(counts, masks.sum(1)):
            problems.append("packed masks or kept counts disagree with the masks")
    if case.op in ("masked_bias_relu", "masked_bias_relu_", "pathway_conv2d"):
        mask = case.args[2] if case.op != "pathway_conv2d" else case.args[5]
        fill = case.args[3] if case.op != "pathway_conv2d" else None
        removed = ~mask.cpu()[:, :, None, None].expand_as(got[0])
        held = torch.zeros_like(got[0]) if fill is None else fill.cpu()[None, :, None, None].expand_as(got[0])
        if bool((got[0][removed] != held[removed]).any()):
            problems.append("removed output channels are not exactly 0 (or their fill value)")
    if error > LIMITS[case.op]:
        problems.append(f"relative error {error:.2e} > {LIMITS[case.op]:g}")
    return error, written, problems


def check_case(impl: str, fn: Callable, case: Case) -> CaseResult:
    """Runs one case twice (poisoned allocator before each) and compares with the CPU reference."""
    device = _device(case)
    want = reference(case)
    start = time.perf_counter()
    try:
        _poison(device, want)
        first = launch(fn, case)
        _poison(device, want)
        second = launch(fn, case)
    except Exception as exc:  # a kernel error is this case's finding, not the script's end
        return CaseResult(impl, device.type, case.op, case.name, case.batch, float("nan"), LIMITS[case.op], False,
                          False, f"raised {type(exc).__name__}: {str(exc)[:200]}", time.perf_counter() - start)
    seconds = (time.perf_counter() - start) / 2
    repeatable = all(torch.equal(a.cpu().contiguous().view(torch.uint8), b.cpu().contiguous().view(torch.uint8))
                     for a, b in zip(first, second, strict=True))
    error, written, problems = _problems(case, first, want)
    if not repeatable:
        problems.append("two runs differ bitwise (a race?)")
    return CaseResult(impl, device.type, case.op, case.name, case.batch, error, LIMITS[case.op], written, repeatable,
                      "; ".join(problems), seconds)


def large_cases(device: torch.device) -> list[CaseResult]:
    """pack_masks and pairwise_iou past 2^31 mask bits, on patterns whose answers are known exactly."""
    results = []
    n, k = 65_539, 32_771  # 2.148e9 bits > 2^31
    start = time.perf_counter()
    phases = (torch.arange(3, device=device)[:, None] + torch.arange(k, device=device)[None, :]) % 3 == 0
    masks = phases[torch.arange(n, device=device) % 3]  # row r keeps the bits j with (r + j) % 3 == 0
    packed = ops.pack_masks(masks).cpu()
    del masks
    check = sorted({0, 1, 2, n // 2, n - 3, n - 2, n - 1,
                    *torch.randint(0, n, (61,), generator=torch.Generator().manual_seed(0)).tolist()})
    bad = [r for r in check if not torch.equal(
        packed[r], opspec.pack_masks_reference((((r + torch.arange(k)) % 3) == 0)[None])[0])]
    results.append(CaseResult("native", device.type, "pack_masks", f"{n}x{k} bits (> 2^31)", n, 0.0, 0.0, True, True,
                              f"rows {bad[:5]} differ" if bad else "", time.perf_counter() - start))
    start = time.perf_counter()
    nbytes = 2**28 + 3  # 2^31 + 24 bits per row: a 32-bit per-row count overflows
    a = torch.full((2, nbytes), 0xFF, dtype=torch.uint8, device=device)
    b = torch.zeros(2, nbytes, dtype=torch.uint8, device=device)
    b[0, : nbytes // 2] = 0xFF
    b[1] = 0x0F
    iou = ops.pairwise_iou(a, b).cpu().double()
    want = torch.tensor([[(nbytes // 2) / nbytes, 0.5]] * 2, dtype=torch.float64)
    error = float((iou - want).abs().max())
    results.append(CaseResult("native", device.type, "pairwise_iou", f"2x{nbytes} bytes (> 2^31 bits a row)", 2, error,
                              1e-6, True, True, f"IoU {iou.tolist()} != {want.tolist()}" if error > 1e-6 else "",
                              time.perf_counter() - start))
    return results


def result_rows(results: list[CaseResult]) -> list[dict[str, Any]]:
    return [{**asdict(r), "ok": r.ok} for r in results]


def triton_kernel_stats() -> list[dict[str, Any]]:
    """Registers and spills of every compiled Triton kernel (JITFunction caches: API of Triton 3.x;
    under the interpreter nothing is compiled)."""
    import triton
    from triton.runtime.jit import JITFunction

    from pathrt.kernels import triton_fused, triton_generator

    rows = []
    for module in (triton_fused, triton_generator):
        for name, fn in vars(module).items():
            if not isinstance(fn, JITFunction):
                continue
            caches = getattr(fn, "device_caches", None)
            if caches is None:
                rows.append({"kernel": name, "variants": 0, "n_regs": None, "n_spills": None,
                             "note": f"triton {triton.__version__}: no device_caches"})
                continue
            for entry in caches.values():
                cache = entry[0] if isinstance(entry, tuple) else entry
                for compiled in cache.values():
                    if hasattr(compiled, "_init_handles"):
                        compiled._init_handles()
                    rows.append({"kernel": name, "n_regs": getattr(compiled, "n_regs", None),
                                 "n_spills": getattr(compiled, "n_spills", None), "note": ""})
    return rows
