"""The one-shot GPU verification script (`make gpu-check OUT=dir`; plan: shared/docs/GPU.md).

    python3 benchmarks/gpu_check.py --out DIR [--dry-run] [--phases env build ...] [--cap NAME=SECONDS]

Runs its phases (env, build, parity, sanitizers, e2e, tests, timings: the `phase_*` functions below
say what each checks) in order, each in its own process under its own time cap (a phase that
overruns is killed and reported, and the next one runs), writes DIR/{env.json, build.txt,
ptxas.txt, parity.csv, sanitizer.txt, e2e.csv, timings.csv, summary.md} and prints the summary table
last (only the end of a GPU run's output may come back), and tests.txt (the `gpu` tests' pytest
output) and triton_kernels.csv (registers, spills, first-call compile time). Exit status 0 when no
phase failed. --budget bounds the whole run (default 560 s: a device command may run 10 minutes).

Without a GPU (or with --dry-run) the same script runs every phase that can: the CPU kernels and
the CPU references, the Triton kernels under TRITON_INTERPRET=1 on small shapes, the standalone
nvcc compile of the CUDA kernels for their ptxas report; what needs a GPU says it was skipped and why.

This driver imports neither pathrt nor anything outside the standard library and torch: on a bare
GPU machine the env phase first installs the wheels brought along for modules pathrt needs and that
machine lacks (GPU.md: jsonschema and its dependencies); the phases then import pathrt and its
helpers `pathrt.benchmarks.gpu_parity`, `gpu_e2e` and `gpu_timings` (which the `gpu` tests share).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
NVCC = "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else shutil.which("nvcc")
# phase name -> cap in seconds (GPU.md); BUDGET bounds the whole run (a device command may run 10 minutes)
CAPS = {"env": 20, "build": 150, "parity": 100, "sanitizers": 75, "e2e": 75, "tests": 45, "timings": 100}
BUDGET = 560
# modules pathrt imports (pyproject dependencies) and the wheel that provides each when missing
DEPENDENCIES = {"torch": None, "torchvision": None, "triton": None, "numpy": None, "safetensors": None,
                "tqdm": None, "sklearn": None, "PIL": None, "matplotlib": None, "jsonschema": "jsonschema",
                "referencing": "referencing", "rpds": "rpds_py", "jsonschema_specifications":
                "jsonschema_specifications", "attrs": "attrs"}


@dataclass
class Context:
    """What a phase knows: where to write, whether a GPU is used, the demo run, the wheels, its deadline."""

    out: Path
    gpu: bool
    workdir: Path
    wheels: Path
    deadline: float
    lines: list[str] = field(default_factory=list)  # the phase's findings, one short line each
    skipped: list[str] = field(default_factory=list)  # what did not run, and why
    failed: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        print(f"  {line}", flush=True)
        self.lines.append(line)

    def skip(self, what: str) -> None:
        print(f"  skipped: {what}", flush=True)
        self.skipped.append(what)

    def fail(self, what: str) -> None:
        print(f"  FAILED: {what}", flush=True)
        self.failed.append(what)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit status, stdout + stderr) of a command; 124 and what it printed when it overran."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, **(env or {})})
        return done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, text + f"\n[timed out after {timeout:.0f} s]"


# ---------------------------------------------------------------- phase 0: environment

SYSTEM_INCLUDES = ("/usr/include", "/usr/local/include")


def _system_libcrypto() -> Path | None:
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/lib/x86_64-linux-gnu", "/usr/lib", "/lib64"):
        if (Path(folder) / "libcrypto.so.3").exists():
            return Path(folder) / "libcrypto.so.3"
    return None


def native_env(wheels: Path, out: Path) -> tuple[dict[str, str], list[str]]:
    """Extra compiler/linker/loader paths for OpenSSL (the bundle digest links libcrypto), taken from
    what `make gpu-wheels` brought where this machine lacks libssl-dev, and what was done."""
    env: dict[str, str] = {}
    notes: list[str] = []
    if not any((Path(d) / "openssl" / "evp.h").exists() for d in SYSTEM_INCLUDES):
        if (wheels / "include" / "openssl" / "evp.h").exists():
            env["CPATH"] = os.pathsep.join(p for p in (str(wheels / "include"), os.environ.get("CPATH", "")) if p)
            notes.append("OpenSSL headers: the brought copy (no libssl-dev here)")
        else:
            notes.append(f"no OpenSSL headers here nor in {wheels / 'include'}: the build will fail "
                         "(apt-get install libssl-dev, or bring `make gpu-wheels`)")
    libcrypto = _system_libcrypto() or (wheels / "lib" / "libcrypto.so.3" if (wheels / "lib" / "libcrypto.so.3")
                                        .exists() else None)
    if libcrypto is None:
        notes.append("no libcrypto.so.3 here nor brought: the build will fail")
    elif not any((Path(d) / "libcrypto.so").exists() for d in (libcrypto.parent, "/usr/lib", "/usr/local/lib")):
        link = out / "lib" / "libcrypto.so"  # the linker wants the unversioned name libssl-dev provides
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(libcrypto)
        env["LIBRARY_PATH"] = os.pathsep.join(p for p in (str(link.parent), os.environ.get("LIBRARY_PATH", "")) if p)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libcrypto.parent), os.environ.get("LD_LIBRARY_PATH", "")) if p)
        notes.append(f"libcrypto: linking {libcrypto}")
    return env, notes


def firecracker() -> bool:
    """Whether this is a Firecracker microVM (virtio-mmio devices on the kernel command line, no DMI)."""
    cmdline = Path("/proc/cmdline").read_text() if Path("/proc/cmdline").exists() else ""
    return "virtio_mmio" in cmdline and not Path("/sys/class/dmi/id/product_name").exists()


def phase_env(ctx: Context) -> None:
    """Versions, nvidia-smi (clocks reported, never set), device properties, Firecracker or not, OpenSSL
    for the build, and the brought wheels installed for the modules this python lacks."""
    import torch

    record: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                              "torch_cuda": torch.version.cuda, "firecracker": firecracker(),
                              "cuda_available": torch.cuda.is_available()}
    record["triton"] = importlib.import_module("triton").__version__ if importlib.util.find_spec("triton") else None
    if NVCC:
        record["nvcc"] = _run([NVCC, "--version"], 10)[1].strip().splitlines()[-1]
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.draw,memory.total"
        record["nvidia_smi"] = _run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], 10)[1].strip()
    else:
        ctx.skip("nvidia-smi: not installed (no NVIDIA driver here)")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record["device"] = {k: getattr(props, k) for k in ("name", "major", "minor", "total_memory",
                                                            "multi_processor_count", "L2_cache_size")
                            if hasattr(props, k)}
        ctx.say(f"{props.name}, sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
                f"{props.total_memory / 2**30:.0f} GiB")
    ctx.say(f"python {record['python']}, torch {record['torch']} (CUDA {record['torch_cuda']}), "
            f"triton {record['triton']}, {record.get('nvcc', 'no nvcc')}, firecracker {record['firecracker']}")
    for note in native_env(ctx.wheels, ctx.out)[1]:
        (ctx.fail if "will fail" in note else ctx.say)(note)
    missing = [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]
    record["missing_modules"] = missing
    record["installed_wheels"] = _install_wheels(ctx, missing)
    (ctx.out / "env.json").write_text(json.dumps(record, indent=1, default=str))


def _install_wheels(ctx: Context, missing: list[str]) -> list[str]:
    """Installs the brought wheels that provide missing modules into OUT/site (no registry needed)."""
    if not missing:
        ctx.say("every module pathrt imports is installed: no wheels needed")
        return []
    wanted = {DEPENDENCIES[name] for name in missing}
    if None in wanted:
        ctx.fail(f"missing {', '.join(n for n in missing if DEPENDENCIES[n] is None)}, which no brought wheel "
                 "provides: install them on this machine")
    wheels = [w for w in sorted(ctx.wheels.glob("*.whl")) if w.name.split("-")[0].lower() in wanted]
    absent = sorted(w for w in wanted - {None} if not any(x.name.split("-")[0].lower() == w for x in wheels))
    if absent:
        ctx.fail(f"missing {', '.join(missing)}; no wheel for {', '.join(absent)} in {ctx.wheels} "
                 "(run `make gpu-wheels` on a machine with PyPI, and bring that folder)")
        return []
    rc, text = _run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target",
                     str(ctx.out / "site"), *map(str, wheels)], 60)
    if rc != 0:
        ctx.fail(f"pip install of the wheels failed: {text.strip().splitlines()[-1]}")
        return []
    ctx.say(f"installed {len(wheels)} wheels into {ctx.out / 'site'} for {', '.join(missing)}")
    return [w.name for w in wheels]


# ---------------------------------------------------------------- phase 1: build, ptxas, SASS

PTXAS_FUNCTION = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")


def ptxas_report(text: str) -> list[dict[str, Any]]:
    """Registers, spills and stack per kernel from `ptxas -v` output."""
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        if m := PTXAS_FUNCTION.search(line):
            rows.append({"kernel": m.group(1), "arch": m.group(2), "registers": None, "stack": None,
                         "spill_stores": None, "spill_loads": None})
        elif rows and (m := PTXAS_FRAME.search(line)):
            rows[-1].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif rows and (m := PTXAS_REGISTERS.search(line)):
            rows[-1]["registers"] = int(m.group(1))
    if shutil.which("c++filt") and rows:
        names = _run(["c++filt", *[r["kernel"] for r in rows]], 10)[1].splitlines()
        for row, name in zip(rows, names, strict=False):
            row["kernel"] = re.sub(r"\(anonymous namespace\)::|pathrt::", "", name).split("(")[0]
    return rows


def phase_build(ctx: Context) -> None:
    """pathrt._C built against this machine's torch for sm_90 (ptxas -v kept), its SASS checked for sm_90
    and local-memory traffic, and `pathrt info --json` for every op's CUDA kernel."""
    if ctx.gpu:
        env = {"TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "16", "NVCC_APPEND_FLAGS": "-Xptxas -v"}
        start = time.perf_counter()
        rc, text = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."],
                        ctx.deadline - time.time() - 20, env)
        if rc != 0 and "externally-managed-environment" in text:  # PEP 668 python: build in place, install nothing
            ctx.say("pip refused to install into this externally managed python: built in place instead")
            rc, more = _run([sys.executable, "setup.py", "build_ext", "--inplace"], ctx.deadline - time.time() - 20,
                            env)
            text += more
        seconds = time.perf_counter() - start
        if rc != 0:
            ctx.fail(f"build failed (exit {rc}) after {seconds:.0f} s: see build.txt")
        else:
            ctx.say(f"built pathrt._C against torch on this machine in {seconds:.0f} s (TORCH_CUDA_ARCH_LIST=9.0)")
    elif NVCC is None:
        ctx.skip("the CUDA kernels' ptxas report: no nvcc here")
        text = ""
    else:
        ctx.skip("rebuilding pathrt._C (dry run: the extension of `make build` is the one under test; on the GPU "
                 "machine this phase rebuilds it against that machine's torch)")
        text = ""
        for source in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
            rc, out = _run([NVCC, "-c", "-arch=sm_90", "-O3", "-std=c++17", f"-I{ROOT / 'csrc' / 'include'}",
                            "-Xptxas", "-v", str(source), "-o", os.devnull], 120)
            text += out
            if rc != 0:
                ctx.fail(f"nvcc failed on {source.name}")
        ctx.say("compiled csrc/cuda/*.cu for sm_90 with nvcc -Xptxas -v (standalone, for the ptxas report)")
    (ctx.out / "build.txt").write_text(text)
    rows = ptxas_report(text)
    (ctx.out / "ptxas.txt").write_text("\n".join(
        f"{r['arch']} {r['registers']:>4} regs {r['spill_stores']:>5} B spill st {r['spill_loads']:>5} B spill ld "
        f"{r['stack']:>5} B stack  {r['kernel']}" for r in rows) + "\n")
    if rows:
        spilling = [r["kernel"] for r in rows if (r["spill_stores"] or 0) + (r["spill_loads"] or 0)]
        ctx.say(f"ptxas: {len(rows)} kernels, max {max(r['registers'] or 0 for r in rows)} registers, "
                f"{len(spilling)} spill{': ' + ', '.join(spilling[:4]) if spilling else ''}")
    _sass_report(ctx)
    _info_report(ctx)


def _sass_report(ctx: Context) -> None:
    cuobjdump = shutil.which("cuobjdump") or ("/usr/local/cuda/bin/cuobjdump"
                                              if Path("/usr/local/cuda/bin/cuobjdump").exists() else None)
    libraries = sorted((ROOT / "pathrt").glob("_C*.so"))
    if cuobjdump is None or not libraries:
        ctx.skip("SASS report: " + ("cuobjdump not found" if cuobjdump is None else "no pathrt/_C*.so built"))
        return
    sass = _run([cuobjdump, "--dump-sass", str(libraries[0])], 60)[1]
    archs = sorted(set(re.findall(r"arch = (sm_\d+)", sass)))
    local = {op: len(re.findall(rf"\b{op}(?:\.\w+)*\s", sass)) for op in ("LDL", "STL")}
    ctx.say(f"SASS archs {', '.join(archs) or 'none'}; local-memory instructions LDL {local['LDL']}, "
            f"STL {local['STL']}")
    if "sm_90" not in archs:
        ctx.fail("no sm_90 SASS in pathrt._C")


def _info_report(ctx: Context) -> None:
    rc, text = _run([sys.executable, "-m", "pathrt.cli", "info", "--json"], 60)
    try:
        info = json.loads(text[text.index("{"):])
    except ValueError:
        ctx.fail(f"`pathrt info --json` failed (exit {rc}): {text.strip()[-200:]}")
        return
    reference = sorted(op for op, keys in info["ops"].items() if keys["CUDA"] != "native")
    ctx.say(f"pathrt info: CUDA kernels compiled {info['cuda_kernels_compiled']}, usable "
            f"{info['cuda_kernels_usable']}; ops without a CUDA kernel: {', '.join(reference) or 'none'}")
    if reference or not info["cuda_kernels_compiled"] or (ctx.gpu and not info["cuda_kernels_usable"]):
        ctx.fail("pathrt info does not list every op's CUDA kernel as usable")


# ---------------------------------------------------------------- phase 2: op parity

def phase_parity(ctx: Context) -> None:
    """Every CUDA op and Triton kernel against its CPU reference (`pathrt.benchmarks.gpu_parity`)."""
    import torch

    from pathrt.benchmarks import gpu_parity

    device = torch.device("cuda" if ctx.gpu else "cpu")
    results: list[gpu_parity.CaseResult] = []
    first_call: dict[str, float] = {}
    impls = gpu_parity.implementations(device)
    if "triton" not in impls:
        ctx.skip(f"Triton kernels: {gpu_parity.triton_usable(device)}")
    plans: list[tuple[str, Any]] = [("native", gpu_parity.cases(device, gpu_parity.NATIVE_OPS))]
    if "triton" in impls:
        if ctx.gpu:
            plans.append(("triton", gpu_parity.cases(device, gpu_parity.TRITON_OPS)))
        else:  # the interpreter runs a conv program per output block in numpy: seconds per case
            ctx.skip("Triton cases at batches 64 and 257 and masks keep 0.05/0.95 (interpreted: too slow on a CPU)")
            others = tuple(op for op in gpu_parity.TRITON_OPS if op != "pathway_conv2d")
            plans.append(("triton", gpu_parity.cases(device, others, (1, 3), ("all0", "all1", "keep0.5"))))
            plans.append(("triton", gpu_parity.cases(device, ("pathway_conv2d",), (1,), ("all0", "keep0.5"))))
    stopped = False
    for impl, cases in plans:
        for case in cases:
            if time.time() > ctx.deadline:
                stopped = True
                break
            result = gpu_parity.check_case(impl, impls[impl][case.op], case)
            first_call.setdefault(f"{impl}:{case.op}", result.seconds)
            results.append(result)
    if stopped:
        ctx.fail(f"the cap ran out after {len(results)} cases: the rest did not run")
    elif time.time() + 30 < ctx.deadline:
        results += gpu_parity.large_cases(device)
    else:
        ctx.skip("the > 2^31-bit cases (too little time left in the cap)")
    write_csv(ctx.out / "parity.csv", gpu_parity.result_rows(results))
    bad = [r for r in results if not r.ok]
    for impl in sorted({r.impl for r in results}):
        mine = [r for r in results if r.impl == impl]
        worst = max(mine, key=lambda r: r.error / r.limit if r.limit else r.error)
        ctx.say(f"{impl} on {device.type}: {sum(r.ok for r in mine)}/{len(mine)} cases agree with the CPU reference; "
                f"worst {worst.op} {worst.error:.1e} (limit {worst.limit:g})")
    for r in bad[:8]:
        ctx.fail(f"{r.impl} {r.op} [{r.case}, batch {r.batch}]: {r.problem}")
    if "triton" in impls and ctx.gpu:
        stats = gpu_parity.triton_kernel_stats()
        write_csv(ctx.out / "triton_kernels.csv", [{**s, "first_call_s": ""} for s in stats] +
                  [{"kernel": k, "first_call_s": v} for k, v in first_call.items() if k.startswith("triton:")])
        spills = [s["kernel"] for s in stats if s.get("n_spills")]
        ctx.say(f"Triton: {len(stats)} compiled variants, max {max((s['n_regs'] or 0 for s in stats), default=0)} "
                f"registers, spills in {', '.join(spills) or 'none'}; first calls (compile) up to "
                f"{max((v for k, v in first_call.items() if k.startswith('triton:')), default=0):.1f} s")


# ---------------------------------------------------------------- phase 3: compute-sanitizer

def launch_once() -> None:
    """Every native op launched once on small inputs (the program compute-sanitizer watches)."""
    import torch

    from pathrt.benchmarks import gpu_parity

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impl = gpu_parity.implementations(device)["native"]
    done = set()
    for case in gpu_parity.cases(device, gpu_parity.NATIVE_OPS, (3,), ("keep0.5",)):
        if case.op not in done:
            gpu_parity.launch(impl[case.op], case)
            done.add(case.op)
    print(f"launched {len(done)} ops on {device.type}")


def phase_sanitizers(ctx: Context) -> None:
    """compute-sanitizer memcheck, racecheck and initcheck over one launch of every CUDA op."""
    sanitizer = shutil.which("compute-sanitizer") or ("/usr/local/cuda/bin/compute-sanitizer" if Path(
        "/usr/local/cuda/bin/compute-sanitizer").exists() else None)
    program = [sys.executable, str(SCRIPT), "--launch-once"]
    report = []
    if not ctx.gpu or sanitizer is None:
        ctx.skip("compute-sanitizer: " + ("no GPU" if not ctx.gpu else "not installed") +
                 "; the launch-every-op program ran without it")
        rc, text = _run(program, max(ctx.deadline - time.time(), 5))
        report.append(f"== without sanitizer (exit {rc})\n{text}")
        (ctx.out / "sanitizer.txt").write_text("\n".join(report))
        if rc != 0:
            ctx.fail(f"the launch-every-op program failed: {text.strip()[-200:]}")
        else:
            ctx.say(text.strip().splitlines()[-1])
        return
    for tool, share in (("memcheck", 0.5), ("racecheck", 0.5), ("initcheck", 1.0)):
        budget = share * (ctx.deadline - time.time() - 2)
        rc, text = _run([sanitizer, "--tool", tool, "--error-exitcode", "99", *program], budget)
        report.append(f"== {tool} (exit {rc})\n{text}")
        summary = re.findall(r"ERROR SUMMARY: (\d+) error", text)
        if rc == 124:
            ctx.fail(f"{tool}: timed out after {budget:.0f} s")
        elif rc != 0 or (summary and summary[-1] != "0"):
            ctx.fail(f"{tool}: {summary[-1] if summary else '?'} errors (exit {rc}): see sanitizer.txt")
        else:
            ctx.say(f"{tool}: 0 errors")
    (ctx.out / "sanitizer.txt").write_text("\n".join(report))


# ---------------------------------------------------------------- phase 4: end to end

def phase_e2e(ctx: Context) -> None:
    """explain on native (CUDA) and triton against CPU eager (`pathrt.benchmarks.gpu_e2e`), TF32 off."""
    from pathrt.benchmarks import gpu_e2e

    rows = []
    device = "cuda" if ctx.gpu else "cpu"
    gpu_e2e.set_tf32(False)  # the references' precision for the whole phase
    for model in gpu_e2e.models(ctx.workdir):
        if time.time() > ctx.deadline:
            ctx.fail(f"the cap ran out before {model.name}")
            break
        backends = ("native", "triton") if ctx.gpu or model.name == "tiny" else ("native",)
        rows += gpu_e2e.rows_for(model, device, backends, 16)
        write_csv(ctx.out / "e2e.csv", gpu_e2e.as_dicts(rows))  # after each model: a killed phase keeps them
    if not ctx.gpu:
        ctx.skip("triton end to end on the embedded, VGG-11 and ResNet-18 models (interpreted: minutes each); "
                 "the tiny model runs it")
    for r in rows:
        line = (f"{r.model} {r.backend} on {r.device}{' TF32' if r.tf32 else ''}: logits {r.logits_error:.1e}, "
                f"pathway {r.pathway_logits_error:.1e}, masks in band {r.masks_within_band}, outside "
                f"{r.masks_outside_band}, fidelity {r.fidelity:.1f} ({r.fidelity_ref:.1f})")
        (ctx.say if r.ok else ctx.fail)(line + ("" if r.ok else f": {r.problem}"))


# ---------------------------------------------------------------- phase 5: the gpu tests

def phase_tests(ctx: Context) -> None:
    """The suite's `gpu`-marked tests (CUDA and Triton parity); they skip, saying so, without a GPU."""
    rc, text = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                     "tests/test_gpu.py"], max(ctx.deadline - time.time(), 5))
    (ctx.out / "tests.txt").write_text(text)
    tail = text.strip().splitlines()[-1] if text.strip() else f"no output (exit {rc})"
    if rc == 124:
        ctx.fail(f"pytest -m gpu timed out: {tail}")
    elif rc != 0:
        ctx.fail(f"pytest -m gpu: {tail} (tests.txt)")
    elif "skipped" in tail and "passed" not in tail:
        ctx.skip(f"the gpu tests: {tail} (no CUDA device)")
    else:
        ctx.say(f"pytest -m gpu: {tail}")


# ---------------------------------------------------------------- phase 6: timings

def phase_timings(ctx: Context) -> None:
    """Bandwidth, memory-bound ops, the conv crossover, explain latency/graphs/throughput/memory
    (`pathrt.benchmarks.gpu_timings`)."""
    import torch

    from pathrt.benchmarks import gpu_e2e, gpu_timings

    device = torch.device("cuda" if ctx.gpu else "cpu")
    gpu_e2e.set_tf32(False)  # the references' precision for the whole phase
    rows: list[dict[str, Any]] = []

    def keep(section: str, new: list[dict[str, Any]]) -> None:  # written after each section
        rows.extend({"section": section, **r} for r in new)
        write_csv(ctx.out / "timings.csv", rows)

    ceiling = gpu_timings.copy_bandwidth(device, 2**30 if ctx.gpu else 2**26)
    keep("copy", [{"GB/s": ceiling}])
    ctx.say(f"copy bandwidth {ceiling:.0f} GB/s on {device.type}")
    memory = gpu_timings.memory_bound(device, 1 if ctx.gpu else 64, ceiling)
    keep("memory-bound", memory)
    ctx.say("memory-bound, % of copy bandwidth: " + ", ".join(f"{r['op']} {r['% of copy']:.0f}%" for r in memory) +
            ("" if ctx.gpu else " (CPU: cache-resident sizes that exercise the code, not a bandwidth figure)"))
    if ctx.gpu:
        convs = gpu_timings.conv_crossover(device)
    else:
        ctx.skip("conv crossover at VGG-11 sizes, batches 64/256 and CUDA graphs (GPU only); the CPU ran one small "
                 "layer at batches 1 and 4")
        convs = gpu_timings.conv_crossover(device, ((16, 32, 8),), (1, 4), (1.0, 0.2))
    keep("conv", convs)
    for layer in sorted({r["layer"] for r in convs}):
        for batch in sorted({r["batch"] for r in convs}):
            wins = [r["keep"] for r in convs if r["layer"] == layer and r["batch"] == batch and r["best"] == "sparse"]
            ctx.say(f"conv {layer} batch {batch}: pathway_conv2d fastest at keep "
                    f"{', '.join(map(str, wins)) if wins else 'none'}")
    for model in gpu_e2e.models(ctx.workdir, ("embedded", "vgg11") if ctx.gpu else ("embedded",)):
        if time.time() > ctx.deadline - 20:
            ctx.fail(f"the cap ran out before the explain timings of {model.name}")
            break
        explain = gpu_timings.explain_timings(model, device, ("native", "triton") if ctx.gpu else ("native",),
                                              (256, 1024) if ctx.gpu else (16,))
        keep("explain", explain)
        for r in explain:
            value = r["value"]
            ctx.say(f"{r['model']} {r['backend']}: {r['what']} {value:.3g}" if isinstance(value, float)
                    else f"{r['model']} {r['backend']}: {r['what']}: {value}")


# ---------------------------------------------------------------- driver

PHASES: dict[str, Callable[[Context], None]] = {"env": phase_env, "build": phase_build, "parity": phase_parity,
                                                "sanitizers": phase_sanitizers, "e2e": phase_e2e,
                                                "tests": phase_tests, "timings": phase_timings}


def run_phase(name: str, args: argparse.Namespace) -> int:
    """Runs one phase in this process and records what it found in OUT/phases/NAME.json."""
    import torch

    ctx = Context(args.out, torch.cuda.is_available() and not args.dry_run, args.workdir, args.wheels, args.deadline)
    print(f"== phase {name} on {'the GPU' if ctx.gpu else 'the CPU (dry run)'}", flush=True)
    start = time.perf_counter()
    try:
        PHASES[name](ctx)
    except Exception as exc:  # the phase's finding; the next phase still runs
        import traceback

        traceback.print_exc()
        ctx.fail(f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    status = "failed" if ctx.failed else "ok"
    record = {"status": status, "seconds": time.perf_counter() - start, "lines": ctx.lines,
              "skipped": ctx.skipped, "failed": ctx.failed}
    (args.out / "phases" / f"{name}.json").write_text(json.dumps(record, indent=1))
    return 1 if ctx.failed else 0


def _phase_process(name: str, args: argparse.Namespace, cap: float) -> dict[str, Any]:
    """Runs a phase in its own process group under `cap` seconds; kills the group when it overruns."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **native_env(args.wheels, args.out)[0]}
    site = args.out / "site"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site) if site.exists() else "", str(ROOT),
                                                    env.get("PYTHONPATH", "")) if p)
    if args.dry_run or not _gpu_present():
        env["TRITON_INTERPRET"] = "1"
    record_file = args.out / "phases" / f"{name}.json"
    record_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(SCRIPT), "--phase", name, "--out", str(args.out),
           "--workdir", str(args.workdir), "--wheels", str(args.wheels), "--deadline", str(time.time() + cap - 5)]
    if args.dry_run:
        cmd.append("--dry-run")
    start = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        rc = process.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return {"status": "timeout", "seconds": time.perf_counter() - start, "lines": [],
                "skipped": [], "failed": [f"killed after its cap of {cap:.0f} s"]}
    if record_file.exists():
        return json.loads(record_file.read_text())
    return {"status": "failed", "seconds": time.perf_counter() - start, "lines": [], "skipped": [],
            "failed": [f"the phase process exited {rc} without a record"]}


def _gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def summary_table(records: dict[str, dict[str, Any]], gpu: bool, seconds: float) -> str:
    lines = [f"# pathrt gpu-check summary ({'GPU run' if gpu else 'CPU dry run'}, {seconds:.0f} s)", "",
             "| phase | status | s | findings |", "|---|---|---|---|"]
    for name, r in records.items():
        findings = r["failed"] + r["lines"]
        lines.append(f"| {name} | {r['status']} | {r['seconds']:.0f} | {'<br>'.join(findings[:12])} |")
    skipped = [f"- {name}: {s}" for name, r in records.items() for s in r["skipped"]]
    return "\n".join(lines + (["", "Skipped:", *skipped] if skipped else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for the results")
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU even where a GPU exists")
    parser.add_argument("--phases", nargs="+", choices=list(PHASES), default=list(PHASES))
    parser.add_argument("--cap", action="append", default=[], metavar="NAME=SECONDS",
                        help="override a phase's time cap (default: " +
                             ", ".join(f"{k} {v}" for k, v in CAPS.items()) + ")")
    parser.add_argument("--budget", type=float, default=BUDGET,
                        help=f"seconds for the whole run (default {BUDGET}); phases left when it is spent do not run")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo",
                        help="the demo run with the trained embedded model (random weights when absent)")
    parser.add_argument("--wheels", type=Path, default=ROOT / "build" / "gpu-wheels",
                        help="wheels to install for modules this machine lacks (`make gpu-wheels`)")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--launch-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launch_once:
        launch_once()
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "phases").mkdir(exist_ok=True)
    if args.phase:
        return run_phase(args.phase, args)
    caps = dict(CAPS)
    for item in args.cap:
        name, _, value = item.partition("=")
        if name not in caps or not value.replace(".", "", 1).isdigit():
            parser.error(f"--cap takes NAME=SECONDS with NAME one of {', '.join(caps)}, got {item!r}")
        caps[name] = float(value)
    gpu = _gpu_present() and not args.dry_run
    start = time.perf_counter()
    records = {}
    for name in args.phases:
        left = args.budget - (time.perf_counter() - start) - 5  # 5 s kept for the summary
        if left < 10:
            records[name] = {"status": "not run", "seconds": 0.0, "lines": [], "skipped": [],
                             "failed": [f"the run's budget of {args.budget:.0f} s was spent"]}
            continue
        records[name] = _phase_process(name, args, min(caps[name], left))
    table = summary_table(records, gpu, time.perf_counter() - start)
    (args.out / "summary.md").write_text(table)
    print("\n" + table, flush=True)
    return 0 if all(r["status"] == "ok" for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
