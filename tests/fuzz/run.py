"""`make fuzz`: runs each loader harness under atheris (libFuzzer) for a fixed time and records it.

    python -m tests.fuzz.run [--harness artifact bundle onnx] [--seconds 60] [--out runs/fuzz]

Per harness: a corpus folder seeded with valid files pathrt wrote itself (kept between runs, so
coverage accumulates), a child process that fuzzes for `--seconds` with Python coverage of pathrt
(atheris instrumentation), a per-input timeout (a hang is a finding) and a memory limit. Each run
appends {harness, seconds, executions, corpus, findings} to `<out>/fuzz.jsonl`; findings (crash,
hang, out-of-memory inputs) are saved under `<out>/<harness>/findings/`. Exit status 1 on any finding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS_NAMES = ("artifact", "bundle", "onnx")


def _child(harness: str, libfuzzer_args: list[str]) -> None:
    """The fuzzing process: instrument pathrt, then hand control to libFuzzer."""
    import atheris

    holder: list = []
    atheris.Setup([sys.argv[0], *libfuzzer_args], lambda data: holder[0](harness, data))
    with atheris.instrument_imports(include=["pathrt", "tests.fuzz"]):
        import pathrt.generator
        import pathrt.runtime
        import pathrt.training
        import pathrt.transfer
        from tests.fuzz.harnesses import run_one
        if harness == "onnx":
            import pathrt.export  # noqa: F401
    import torch

    torch.set_num_threads(1)
    holder.append(run_one)
    atheris.Fuzz()


def _seed_corpus(harness: str, corpus: Path) -> None:
    from tests.fuzz.harnesses import seeds

    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds(harness)):
        (corpus / f"seed-{i}").write_bytes(data)


def fuzz(harness: str, seconds: int, out: Path, extension: str | None = None, rss_limit_mb: int = 6144,
         timeout_s: int = 20) -> dict:
    """Fuzzes one harness for `seconds`; returns the run's record (also appended to fuzz.jsonl).
    `extension`: a pathrt._C built with coverage counters (`make fuzz`) for the child to fuzz."""
    folder = out / harness
    corpus, findings = folder / "corpus", folder / "findings"
    findings.mkdir(parents=True, exist_ok=True)
    if not any(corpus.glob("seed-*")):
        _seed_corpus(harness, corpus)
    before = set(findings.iterdir())
    args = [f"-max_total_time={seconds}", f"-timeout={timeout_s}", f"-rss_limit_mb={rss_limit_mb}",
            "-print_final_stats=1", f"-artifact_prefix={findings}/", "-max_len=1048576", str(corpus)]
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if extension:
        # the extension's coverage callbacks come from a preloaded libFuzzer (`make fuzz` builds it from
        # clang's libclang_rt.fuzzer_no_main next to the extension); atheris then drives that libFuzzer
        libfuzzer = Path(extension).resolve().parents[1] / "libfuzzer_no_main.so"
        env.update(PATHRT_EXTENSION_FILE=str(Path(extension).resolve()), LD_PRELOAD=str(libfuzzer))
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "--child", harness, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (folder / "last.log").write_text(log, encoding="utf-8")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log) or re.findall(r"Done (\d+) runs", log)
    new = sorted(str(p.relative_to(out)) for p in set(findings.iterdir()) - before)
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", log)
    record = {"harness": harness, "seconds": round(time.perf_counter() - start, 1),
              "native_coverage": bool(extension), "edges": int(coverage[-1][0]) if coverage else 0,
              "executions": int(runs[-1]) if runs else 0, "corpus": len(list(corpus.iterdir())),
              "returncode": proc.returncode, "findings": new, "date": time.strftime("%Y-%m-%d %H:%M")}
    with open(out / "fuzz.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def totals(out: Path) -> dict[str, int]:
    """Executions per harness over every recorded run in `out`."""
    sums: dict[str, int] = {}
    path = out / "fuzz.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        record = json.loads(line)
        sums[record["harness"]] = sums.get(record["harness"], 0) + record["executions"]
    return sums


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harness", nargs="+", choices=HARNESS_NAMES, default=list(HARNESS_NAMES))
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per harness")
    parser.add_argument("--out", default="runs/fuzz")
    parser.add_argument("--extension", help="pathrt._C built with PATHRT_FUZZ=1 (C++ coverage); default: the "
                        "installed one (Python coverage only)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    failed = False
    for harness in args.harness:
        record = fuzz(harness, args.seconds, out, args.extension)
        ok = record["returncode"] == 0 and not record["findings"] and record["executions"] > 0
        failed |= not ok
        print(f"{harness}: {record['executions']} executions in {record['seconds']} s, {record['edges']} edges, "
              f"corpus {record['corpus']}, "
              f"{'no findings' if ok else 'FINDINGS ' + str(record['findings']) + ' (see last.log)'}")
    print("executions so far:", ", ".join(f"{k} {v}" for k, v in totals(out).items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
