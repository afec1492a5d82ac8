"""The `pathrt` command line: info, train-target, train, explain, export, bundle, evaluate, bench, profile,
serve, request, demo.

Errors print one line on stderr, never a traceback (`--debug` shows it), and exit with a code that
says what went wrong: 2 usage, 3 unreadable/corrupted/wrong-version artifact, 4 artifact of another
model or spec, 5 bad input, 6 output not writable (disk full, permissions), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pathrt.errors import DistributedError, InputError, PathrtError, exit_code
from pathrt.heap import limit_heap_growth
from pathrt.threads import invoked_as_command


def _cmd_info(args: argparse.Namespace) -> None:
    from pathrt.runtime.info import environment, format_environment

    env = environment()
    print(json.dumps(env, indent=2) if args.json else format_environment(env))


def _flags(names: Sequence[str]) -> str:
    """Argument names as the command line spells them, with their verb ("--size is", "--a, --b are")."""
    return ", ".join("--" + n.replace("_", "-") for n in names) + (" is" if len(names) == 1 else " are")


def _load_data(args: argparse.Namespace, classes: Sequence[str] | None = None):
    """(train, test) from --image-folder (stratified split; folders labelled by `classes`, a target's
    class names, when given), --cifar10, or the embedded digits."""
    from pathrt import data

    folder_only = [n for n in ("size", "test_fraction", "resize") if getattr(args, n) is not None]
    if folder_only and not args.image_folder:
        raise InputError(f"{_flags(folder_only)} only used with --image-folder (CIFAR-10 and the digits come at "
                         "their own size and split); drop them")
    if args.image_folder:
        size = 32 if args.size is None else args.size
        test_fraction = 0.2 if args.test_fraction is None else args.test_fraction
        full = data.load_image_folder(args.image_folder, size, classes=classes,
                                      resize=args.resize or "area").materialize()
        train_idx, test_idx = data.stratified_split(full.labels.numpy(), test_fraction, args.seed)
        return full.subset(train_idx, f"{full.name}-train"), full.subset(test_idx, f"{full.name}-test")
    if args.cifar10:
        return data.load_cifar10(args.cifar10, "train"), data.load_cifar10(args.cifar10, "test")
    return data.load_digits("train"), data.load_digits("test")


def _cmd_train_target(args: argparse.Namespace) -> None:
    from pathrt.targets.training import TargetTrainingConfig, train_target

    train, test = _load_data(args)
    config = TargetTrainingConfig(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  seed=args.seed)
    target = train_target(train, test, config, out=args.out, progress=not args.no_progress)
    print(f"test accuracy {100 * target.info['test_accuracy']:.2f}% on {len(test)} images "
          f"after {target.info['train_seconds']} s; saved {Path(args.out)}.safetensors/.json")


def _without(argv: Sequence[str], flag: str) -> list[str]:
    """`argv` less `flag` and its value (`--flag V` or `--flag=V`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _cmd_train(args: argparse.Namespace) -> None:
    from pathrt.ddp import World, launch
    from pathrt.generator import GeneratorConfig
    from pathrt.targets import load_target
    from pathrt.training import GeneratorTrainingConfig, train_generator

    if args.nproc < 1 or args.threads < 1:
        raise InputError(f"--nproc and --threads must be >= 1, got {args.nproc} and {args.threads}")
    if args.batch_size % args.nproc:
        raise InputError(f"--batch-size {args.batch_size} does not split evenly over --nproc {args.nproc}; choose a "
                         "multiple of --nproc (it is the global batch)")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # this process starts the DDP processes
        return launch(args.nproc, _without(_without(args.argv, "--nproc"), "--threads"), args.threads)
    world = World.from_env()
    try:
        target = load_target(args.target)
        train, val = _load_data(args, target.classes)
        config = GeneratorTrainingConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                         lambda_sp=args.lambda_sp, seed=args.seed, val_every=args.val_every,
                                         checkpoint_every=args.checkpoint_every, target_fidelity=args.target_fidelity)
        generator_config = GeneratorConfig.small() if args.small else GeneratorConfig()
        _, history = train_generator(target, train, val, generator_config, config, out=args.out, resume=args.resume,
                                     progress=not args.no_progress, world=world)
    finally:
        world.close()
    if not world.main:
        return None
    last = history[-1]
    chosen = max((e for e in history if e.get("best")), key=lambda e: e["val_sparsity"], default=last)
    if args.target_fidelity is not None:
        print(f"target balanced fidelity {100 * args.target_fidelity:.0f}% "
              + (f"met: kept the sparsest such generator (step {chosen['step']})" if last.get("target_fidelity_reached")
                 else "not reached: kept the last generator; lower the target or train longer"))
    print(f"validation fidelity {chosen['val_fidelity']:.1f}% (balanced {chosen['val_balanced_fidelity']:.1f}%) at "
          f"sparsity {100 * chosen['val_sparsity']:.1f}% after {chosen['step']} of {last['step']} steps; saved "
          f"{Path(args.out)}.safetensors/.json")


def _cmd_explain(args: argparse.Namespace) -> None:
    ray_only = [n for n in ("actors", "threads", "ray_address") if getattr(args, n) is not None]
    if args.engine == "ray":
        from pathrt.distributed import explain_dataset

        explain_dataset(args.target, args.generator, args.out, images=args.images, actors=args.actors or 1,
                        threads=args.threads or 1, block_size=args.batch_size, backend=args.backend,
                        address=args.ray_address, progress=not args.no_progress)
        return
    if ray_only:
        raise InputError(f"{_flags(ray_only)} only used with --engine ray; drop them or add --engine ray")
    from pathrt.explain_folder import explain_to_folder

    explain_to_folder(args.target, args.generator, args.out, images=args.images, batch_size=args.batch_size,
                      backend=args.backend, progress=not args.no_progress)


def _cmd_export(args: argparse.Namespace) -> None:
    from pathrt.export import export_explainer, export_generator
    from pathrt.generator import load_generator
    from pathrt.targets import load_target

    explainer_only = [n for n in ("outputs", "fp16") if getattr(args, n)]
    if explainer_only and args.what == "generator":
        raise InputError(f"{_flags(explainer_only)} only used for the explainer file; use --what explainer or both")
    if args.triton_repo and args.what == "generator":
        raise InputError("--triton-repo serves the explainer file; use --what explainer or both")
    target = load_target(args.target)
    generator, _ = load_generator(args.generator, target_fingerprint=target.fingerprint, spec=target.spec)
    out = Path(args.out)
    reports = []
    if args.what in ("explainer", "both"):
        outputs = args.outputs or None
        kwargs = {"outputs": outputs} if outputs else {}
        reports.append(export_explainer(target, generator, out / "explainer.onnx", opset=args.opset,
                                        verify=not args.no_verify, **kwargs))
        if args.fp16:
            reports.append(export_explainer(target, generator, out / "explainer.fp16.onnx", opset=args.opset,
                                            verify=not args.no_verify, fp16=True, **kwargs))
    if args.what in ("generator", "both"):
        reports.append(export_generator(target, generator, out / "generator.onnx", opset=args.opset,
                                        verify=not args.no_verify))
    for r in reports:
        check = (f"verified in ONNX Runtime ({', '.join(r.providers)}) at batches {r.verified_batches} in "
                 f"{r.verify_seconds:.1f} s; max relative error " +
                 ", ".join(f"{k} {v:.1e}" for k, v in r.max_rel_error.items())
                 if r.verified_batches else "not verified (--no-verify)")
        print(f"wrote {r.path} ({r.bytes / 1e6:.1f} MB, opset {r.opset}) in {r.export_seconds:.1f} s; {check}")
    (out / "export.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2), encoding="utf-8")
    if args.triton_repo:
        _triton_repo(args, out / "explainer.onnx")


def _triton_repo(args: argparse.Namespace, onnx_path: Path) -> None:
    from pathrt.serving.repository import Batching, Instances, write_onnx_repository

    batching = Batching(args.max_batch_size, tuple(args.preferred_batch_sizes or ()), args.max_queue_delay_us)
    instances = Instances.parse(args.triton_instance or [])
    model_dir = write_onnx_repository(args.triton_repo, onnx_path, batching, instances)
    print(f"wrote the Triton model repository {model_dir} (platform onnxruntime_onnx; config checked against "
          f"{onnx_path.name}); serve it with: tritonserver --model-repository {Path(args.triton_repo).resolve()}")


def _cmd_serve(args: argparse.Namespace) -> None:
    from pathrt.generator import load_generator
    from pathrt.serving import Batching, Endpoints, Instances, Server, explainer_config, stop_on_signals
    from pathrt.targets import load_target

    target = load_target(args.target)  # refuse bad artifacts here, before Triton starts
    load_generator(args.generator, target_fingerprint=target.fingerprint, spec=target.spec)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.instances)
    batching = Batching(args.max_batch_size, tuple(args.preferred_batch_sizes or ()), args.max_queue_delay_us)
    config = explainer_config(target, args.target, args.generator, batching, Instances((("cpu", args.instances),)),
                              backend=args.backend, inputs=args.inputs, num_threads=threads)
    endpoints = Endpoints(args.host, args.http_port, args.grpc_port, args.metrics_port)
    server = Server(config, endpoints, exit_timeout_s=args.exit_timeout)
    stop_on_signals(server)
    print(f"starting Triton with the explainer of {args.target} ({args.instances} instance(s), {threads} thread(s) "
          f"each, batches up to {args.max_batch_size}, queue delay {args.max_queue_delay_us} µs)", flush=True)
    server.start()
    try:
        print(f"ready: model {config.name!r}; gRPC {endpoints.grpc_url}, HTTP http://{endpoints.http_url} "
              f"(health: /v2/health/ready), metrics {endpoints.metrics_url}; SIGTERM or Ctrl-C stops", flush=True)
        server.wait()
        print("stopping: finishing requests in flight", flush=True)
    finally:
        server.stop()
    print("stopped", flush=True)


def _cmd_request(args: argparse.Namespace) -> None:
    from pathrt.data import list_image_files, load_digits, read_images
    from pathrt.explain_folder import write_outputs
    from pathrt.serving import Client

    with Client(args.url, args.model, timeout_s=args.timeout) as client:
        if client.inputs != "raw":
            raise InputError(f"the server at {args.url} takes preprocessed images; `pathrt request` sends raw "
                             "pixels: start the server with --inputs raw (the default), or use pathrt.serving.Client")
        labels = None
        if args.images:
            paths = list_image_files(args.images)
            names = [str(p.relative_to(args.images)) for p in paths]
            images = read_images(paths, client.spec.input_shape[1:])
        else:
            test = load_digits("test")
            images, labels = test.images[:args.limit], test.labels[:args.limit]
            names = [f"digits-test/{i}" for i in range(len(images))]
        start = time.perf_counter()
        explanation = client.explain(images, target=args.classes, scores=args.scores)
        seconds = time.perf_counter() - start
    print(f"{len(explanation)} images explained by {args.url} in {seconds:.2f} s")
    write_outputs(Path(args.out), explanation, names, labels, client.class_names)


def _cmd_bundle(args: argparse.Namespace) -> None:
    from pathrt.generator import load_generator
    from pathrt.runtime.backends.session import verify_bundle
    from pathrt.runtime.bundle import write_bundle
    from pathrt.targets import load_target

    target = load_target(args.target)
    generator, _ = load_generator(args.generator, target_fingerprint=target.fingerprint, spec=target.spec)
    start = time.perf_counter()
    path = write_bundle(target, generator, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    if not args.no_verify:
        report = verify_bundle(path, target, generator)
        print(f"verified: the C++ session matches eager on {report.describe()}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from pathrt.evaluate import evaluate, run_faithfulness, write_evaluation
    from pathrt.runtime import Explainer

    explainer = Explainer.from_files(args.target, args.generator, max_batch_size=args.batch_size,
                                     backend=args.backend)
    train, test = _load_data(args, explainer.target.classes)
    preprocess = explainer.target.preprocess
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print  # --json: stdout is the JSON alone
    rows = evaluate(explainer, preprocess(test.images), test.labels, preprocess(train.images), train.labels,
                    j=args.sources, seed=args.seed, include_dgr=not args.no_dgr, log=log)
    faithfulness = None
    if not args.no_faithfulness:
        faithfulness = run_faithfulness(explainer, preprocess(test.images), rows, preprocess(train.images),
                                        steps=args.curve_steps, flip=args.flip, seed=args.seed, log=log)
    table, _ = write_evaluation(rows, len(test), Path(args.out), faithfulness)
    if args.json:
        print((Path(args.out) / "evaluation.json").read_text(encoding="utf-8"))
        return
    print(table)
    print(f"wrote {Path(args.out) / 'evaluation.md'}, evaluation.json and evaluation.png")


# `pathrt bench` settings: the full run's, and what --quick changes (explicit flags override both)
BENCH_PRESETS: dict[str, dict[str, Any]] = {
    "full": {"models": ["embedded", "vgg11", "resnet18"], "batches": [1, 8, 64], "repeats": 10, "budget": 2.0,
             "sweep": [0.0, 0.5, 0.75, 0.9], "sweep_models": ["vgg11", "embedded"], "sweep_batch": 64},
    "quick": {"models": ["embedded"], "batches": [1, 8], "repeats": 5, "budget": 0.1, "sweep": [0.0, 0.75],
              "sweep_models": ["embedded"], "sweep_batch": 8},
}
BENCH_TIMING = {"paths": None, "warmup": 2, "sparsity": 0.6, "dgr_max_batch": 8}  # both presets
BENCH_MEMORY = {"memory_images": 4096, "memory_models": ["embedded", "vgg11"]}  # --memory only
BENCH_LOAD = {"load_models": ["embedded", "resnet18", "vgg11"]}  # --load only
BENCH_SERVE = {"serve_concurrency": [1, 8, 32], "serve_duration": 10.0, "serve_queue_delay_us": 1000}  # --serve only
BENCH_DISTRIBUTED = {"ray_images": 2048, "ray_block_size": 64, "ddp_steps": 600}  # --distributed only


def bench_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The bench's settings: for --memory and --load their own; else the preset (--quick or full)
    and the timing defaults, each overridden by an explicit flag. Flags the chosen mode would ignore
    are refused (InputError), never silently dropped."""
    def given(name: str) -> bool:
        return getattr(args, name) is not None and getattr(args, name) is not False

    modes = {"memory": BENCH_MEMORY, "load": BENCH_LOAD, "serve": BENCH_SERVE, "distributed": BENCH_DISTRIBUTED,
             "timing": {"quick": False, **BENCH_PRESETS["quick" if args.quick else "full"], **BENCH_TIMING}}
    chosen = [m for m in ("memory", "load", "serve", "distributed") if getattr(args, m)]
    if len(chosen) > 1:
        raise InputError("--memory, --load, --serve and --distributed are separate runs: give one of them")
    mode = chosen[0] if chosen else "timing"
    ignored = [n for m, options in modes.items() if m != mode for n in options if given(n)]
    if ignored:
        where = (f"--{mode} measures {mode} only" if chosen
                 else "the timing bench (without --memory, --load, --serve, --distributed)")
        raise InputError(f"{where}: {_flags(ignored)} not used there; drop them")
    return {name: getattr(args, name) if given(name) else value for name, value in modes[mode].items()
            if name != "quick"}


def _cmd_bench(args: argparse.Namespace) -> None:
    from pathrt.benchmarks.harness import build_models, run_bench, sparsity_sweep, sweep_table, write_outputs
    from pathrt.benchmarks.paths import PATHS

    settings = bench_settings(args)
    if args.load:
        from pathrt.benchmarks.load import load_bench

        print(load_bench(settings["load_models"], Path(args.workdir), Path(args.out)))
        print(f"wrote {Path(args.out) / 'load.md'} and load.json")
        return
    if args.serve:
        from pathrt.serving import Batching
        from pathrt.serving.load_test import serve_bench

        print(serve_bench(Path(args.workdir), Path(args.out), settings["serve_concurrency"], settings["serve_duration"],
                          batching=Batching(max_queue_delay_us=settings["serve_queue_delay_us"])))
        print(f"wrote {Path(args.out) / 'serve.md'} and serve.json")
        return
    if args.distributed:
        from pathrt.benchmarks.distributed import distributed_bench
        from pathrt.distributed import in_loopback_namespace, loopback_command

        if not in_loopback_namespace():  # Ray may pick any interface: run the whole bench where only lo exists
            code = subprocess.run(loopback_command([sys.executable, "-m", "pathrt.cli", *args.argv])).returncode
            if code:
                raise DistributedError(f"the bench in the loopback-only namespace failed (exit {code}; its error is "
                                       "above)")
            return
        print(distributed_bench(Path(args.workdir), Path(args.out), settings["ray_images"], settings["ray_block_size"],
                                settings["ddp_steps"]))
        print(f"wrote {Path(args.out) / 'distributed.md'} and distributed.json")
        return
    if args.memory:
        from pathrt.benchmarks.memory import memory_bench

        print(memory_bench(settings["memory_models"], ["session", "native", "eager"], settings["memory_images"], 64,
                           Path(args.workdir), Path(args.out)))
        print(f"wrote {Path(args.out) / 'memory.md'} and memory.json")
        return

    repeats, budget, sweep = settings["repeats"], settings["budget"], settings["sweep"]
    warmup, sparsity, dgr_max_batch = settings["warmup"], settings["sparsity"], settings["dgr_max_batch"]
    paths = settings["paths"] or list(PATHS)
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise InputError(f"unknown bench paths {unknown}; known: {', '.join(PATHS)}")
    models = build_models(settings["models"], Path(args.workdir), sparsity, dgr_max_batch)
    rows, context = run_bench(models, settings["batches"], paths, warmup=warmup, repeats=repeats, budget=budget)
    sweep_rows = []
    if sweep:
        by_name = {m.name.split("@")[0]: m for m in models}
        missing = [n for n in settings["sweep_models"] if n not in by_name]
        extra = build_models(missing, Path(args.workdir), sparsity, dgr_max_batch) if missing else []
        chosen = [by_name[n] if n in by_name else extra[missing.index(n)] for n in settings["sweep_models"]]
        print("pathway pass against sparsity:")
        sweep_rows = sparsity_sweep(chosen, sweep, settings["sweep_batch"], warmup=warmup, repeats=repeats,
                                    budget=budget)
    print(write_outputs(rows, context, Path(args.out), sweep_rows))
    if sweep_rows:
        print(sweep_table(sweep_rows))
    print(f"wrote {Path(args.out) / 'bench.md'}, bench.csv, bench.json, bench.png and sparsity.png")


def _cmd_profile(args: argparse.Namespace) -> None:
    from pathrt.benchmarks.harness import build_models
    from pathrt.benchmarks.profile import run_profile

    model = build_models([args.model], Path(args.workdir), args.sparsity, 1)[0]
    print(run_profile(model, args.backend, args.batch, Path(args.out), warmup=args.warmup, repeats=args.repeats,
                      ops=args.ops))
    print(f"wrote {Path(args.out) / 'profile.md'}, profile.json and trace.json")


def _cmd_demo(args: argparse.Namespace) -> None:
    from pathrt.demo import run_demo

    run_demo(args.workdir, retrain=args.retrain, progress=not args.no_progress, faithfulness=not args.no_faithfulness)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pathrt", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of pathrt errors")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="what is built and usable: extension, CUDA kernels, ops")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_cmd_info)

    from pathrt.data import RESIZE_METHODS
    from pathrt.runtime.backends import BACKENDS
    from pathrt.targets.models import ARCHITECTURES

    def data_args(cmd: argparse.ArgumentParser) -> None:
        source = cmd.add_mutually_exclusive_group()
        source.add_argument("--image-folder", metavar="DIR", help="train on DIR/<class>/<image> (20%% held out)")
        source.add_argument("--cifar10", metavar="DIR", help="train on CIFAR-10 (python format) in DIR")
        cmd.add_argument("--size", type=int, help="image size for --image-folder (default 32)")
        cmd.add_argument("--test-fraction", type=float, help="held-out part of --image-folder (default 0.2)")
        cmd.add_argument("--resize", choices=RESIZE_METHODS, help="how --image-folder images are resized (default "
                         "area: averages the pixels each output pixel covers, antialiased)")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--no-progress", action="store_true")

    target_cmd = sub.add_parser("train-target", help="train a target classifier (default: small VGG on digits)")
    data_args(target_cmd)
    target_cmd.add_argument("--arch", default="small_vgg", choices=ARCHITECTURES)
    target_cmd.add_argument("--epochs", type=int, default=20)
    target_cmd.add_argument("--batch-size", type=int, default=64)
    target_cmd.add_argument("--lr", type=float, default=3e-3)
    target_cmd.add_argument("--out", default="runs/target", help="artifact stem (default runs/target)")
    target_cmd.set_defaults(run=_cmd_train_target)

    train = sub.add_parser("train", help="train a GEN-CNP generator for a target (SPEC §4)")
    data_args(train)
    train.add_argument("--target", default="runs/target", help="target artifact stem (default runs/target)")
    train.add_argument("--out", default="runs/generator", help="generator checkpoint stem (default runs/generator)")
    train.add_argument("--steps", type=int, default=600)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--lambda-sp", type=float, default=1.0, help="weight of the l2 sparsity term")
    train.add_argument("--small", action=argparse.BooleanOptionalAction, default=True,
                       help="the small-target generator (d=128, 2 layers, d_r=32; default) or the full one")
    train.add_argument("--val-every", type=int, default=100, help="validate every N steps (default 100)")
    train.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every N steps (default 100); "
                       "a checkpoint is never torn, whenever the process dies")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from --out")
    train.add_argument("--target-fidelity", type=float, metavar="F", help="adapt the sparsity weight during "
                       "training to reach balanced validation fidelity F (e.g. 0.95, hard masks) and keep the "
                       "sparsest generator that meets it")
    train.add_argument("--nproc", type=int, default=1, help="train with DDP over N processes on this machine "
                       "(torchrun, gloo on 127.0.0.1; --batch-size is the global batch, split evenly)")
    train.add_argument("--threads", type=int, default=1, help="threads per process with --nproc (default 1)")
    train.set_defaults(run=_cmd_train)

    def artifact_args(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--target", default="runs/target", help="target artifact stem (default runs/target)")
        cmd.add_argument("--generator", default="runs/generator", help="generator stem (default runs/generator)")

    def explainer_args(cmd: argparse.ArgumentParser) -> None:
        artifact_args(cmd)
        cmd.add_argument("--batch-size", type=int, default=256)
        cmd.add_argument("--backend", choices=BACKENDS, default="auto",
                         help="explain backend (default auto: native when usable; see `pathrt info`)")

    def batching_args(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--max-batch-size", type=int, default=64, help="largest batch Triton forms (default 64)")
        cmd.add_argument("--preferred-batch-sizes", type=int, nargs="+", metavar="N", help="batch sizes the "
                         "dynamic batcher prefers to form (default: none, as large as the queue allows)")
        cmd.add_argument("--max-queue-delay-us", type=int, default=1000, help="how long a request may wait for "
                         "others to batch with, in µs (default 1000)")

    explain = sub.add_parser("explain", help="explain images (a folder, or the embedded test split)")
    explainer_args(explain)
    explain.add_argument("--images", metavar="DIR", help="folder of images (default: the digits test split); "
                         "with --engine ray also Parquet (a file or folder, encoded images in column 'image')")
    explain.add_argument("--out", default="runs/explain", help="output folder (default runs/explain); an "
                         "interrupted run into the same folder resumes where it stopped")
    explain.add_argument("--engine", choices=("local", "ray"), default="local", help="local: this process "
                         "(default); ray: an actor pool on Ray Data, results as Parquet blocks (pathrt[ray])")
    explain.add_argument("--actors", type=int, help="--engine ray: explainer actors (default 1)")
    explain.add_argument("--threads", type=int, help="--engine ray: threads per actor (default 1)")
    explain.add_argument("--ray-address", help="--engine ray: the cluster to join (e.g. auto, ray://head:10001; "
                         "default: a running local one, else a new local one)")
    explain.add_argument("--no-progress", action="store_true")
    explain.set_defaults(run=_cmd_explain)

    export = sub.add_parser("export", help="export the explainer and/or generator to ONNX, verified in ONNX Runtime")
    artifact_args(export)
    export.add_argument("--out", default="runs/export", help="output folder (default runs/export)")
    export.add_argument("--what", choices=("explainer", "generator", "both"), default="both")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--outputs", nargs="+", help="explainer outputs to keep (default: all); pathway_gradient "
                        "is refused, it needs autograd")
    export.add_argument("--fp16", action="store_true", help="also write explainer.fp16.onnx (float16 weights, "
                        "images and outputs; verified to 2e-2)")
    export.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check against eager")
    export.add_argument("--triton-repo", metavar="DIR", help="also write a Triton model repository for the ONNX "
                        "explainer into DIR (platform onnxruntime_onnx, dynamic batching), checked against the file")
    export.add_argument("--triton-instance", action="append", metavar="KIND=COUNT", help="instance group of "
                        "--triton-repo, repeatable: cpu=2, gpu=1, auto=1 (default auto=1: a GPU where there is one)")
    batching_args(export)
    export.set_defaults(run=_cmd_export)

    serve = sub.add_parser("serve", help="serve the explainer on NVIDIA Triton Inference Server (pathrt[serve]): "
                           "dynamic batching, HTTP/gRPC, metrics")
    artifact_args(serve)
    serve.add_argument("--backend", choices=[b for b in BACKENDS if b != "onnx"], default="auto",
                       help="explain backend in the server (default auto: the fastest usable)")
    serve.add_argument("--inputs", choices=("raw", "preprocessed"), default="raw", help="what requests send: raw "
                       "pixels in [0, 1] (default; the server applies the target's preprocessing) or images "
                       "already normalized with target.preprocess")
    serve.add_argument("--host", default="127.0.0.1", help="address every endpoint binds to (default 127.0.0.1; "
                       "0.0.0.0 serves other machines)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--instances", type=int, default=1, help="model instances (processes) on the CPU (default 1)")
    serve.add_argument("--threads", type=int, default=0, help="threads per instance (default: cores / instances)")
    serve.add_argument("--exit-timeout", type=int, default=30, help="seconds to finish requests in flight on "
                       "SIGTERM (default 30)")
    batching_args(serve)
    serve.set_defaults(run=_cmd_serve)

    request = sub.add_parser("request", help="explain images on a running `pathrt serve` and write the results")
    request.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address (default 127.0.0.1:8001)")
    request.add_argument("--model", default="pathrt", help="model name (default pathrt)")
    request.add_argument("--images", metavar="DIR", help="folder of images (default: the digits test split)")
    request.add_argument("--limit", type=int, default=None, help="only the first N digits test images")
    request.add_argument("--classes", type=int, nargs="+", help="the class to explain: one for all images or one "
                         "per image (default: the prediction)")
    request.add_argument("--scores", action="store_true", help="also fetch the generator's scores")
    request.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    request.add_argument("--out", default="runs/request", help="output folder (default runs/request)")
    request.set_defaults(run=_cmd_request)

    bundle = sub.add_parser("bundle", help="write the deployment bundle the C++ ExplainSession runs (verified)")
    artifact_args(bundle)
    bundle.add_argument("--out", default="runs/bundle/model.bundle", help="bundle file (default "
                        "runs/bundle/model.bundle)")
    bundle.add_argument("--no-verify", action="store_true", help="skip the session-vs-eager check")
    bundle.set_defaults(run=_cmd_bundle)

    evaluate = sub.add_parser("evaluate", help="SPEC §7 table: GEN-CNP against random, critical pathways, DGR")
    data_args(evaluate)
    explainer_args(evaluate)
    evaluate.add_argument("--out", default="runs/evaluate", help="output folder (default runs/evaluate)")
    evaluate.add_argument("--sources", type=int, default=50, help="transfer sources per class (default 50)")
    evaluate.add_argument("--no-dgr", action="store_true", help="skip DGR (30 optimization steps per image)")
    evaluate.add_argument("--no-faithfulness", action="store_true",
                          help="skip the Faithfulness protocols (curves, sufficiency/comprehensiveness, zero vs mean "
                               "ablation, randomization, stability)")
    evaluate.add_argument("--curve-steps", type=int, default=10,
                          help="points of the deletion/insertion curves after 0%% (default 10)")
    evaluate.add_argument("--json", action="store_true",
                          help="print evaluation.json (every number, the faithfulness protocols' too) to stdout; "
                               "progress goes to stderr")
    evaluate.add_argument("--flip", action="store_true",
                          help="add a horizontal flip to the stability test (for data whose classes survive mirroring)")
    evaluate.set_defaults(run=_cmd_evaluate)

    bench = sub.add_parser("bench", help="time every explain path and baseline (median, 20/80 quantiles)")
    full, quick = BENCH_PRESETS["full"], BENCH_PRESETS["quick"]

    def preset(name: str) -> str:
        def show(value: Any) -> str:
            return " ".join(map(str, value)) if isinstance(value, list) else str(value)
        return f"(default {show(full[name])}; --quick: {show(quick[name])})"

    bench.add_argument("--quick", action="store_true", help="embedded model, batches 1 and 8, few repeats (~1-2 min); "
                       "explicit flags below override its settings")
    bench.add_argument("--models", nargs="+", help=f"embedded and/or torchvision architectures (run at 64x64) "
                       f"{preset('models')}")
    bench.add_argument("--batches", nargs="+", type=int, help=preset("batches"))
    bench.add_argument("--paths", nargs="+", help="subset of the registered paths (default: all)")
    bench.add_argument("--warmup", type=int, help=f"untimed calls per row (default {BENCH_TIMING['warmup']})")
    bench.add_argument("--repeats", type=int, help=f"timed calls per row at least {preset('repeats')}")
    bench.add_argument("--budget", type=float, help=f"seconds of timed calls per row: more calls while they last "
                       f"{preset('budget')}")
    bench.add_argument("--sparsity", type=float, help="sparsity of the untrained generators (cost only; default "
                       f"{BENCH_TIMING['sparsity']})")
    bench.add_argument("--dgr-max-batch", type=int, help="largest DGR batch on torchvision models (default "
                       f"{BENCH_TIMING['dgr_max_batch']})")
    bench.add_argument("--workdir", default="runs/demo", help="where `make demo` cached the trained embedded model")
    bench.add_argument("--sweep", nargs="*", type=float, help="generator sparsities of the pathway-pass sweep "
                       f"(--sweep alone: skip it) {preset('sweep')}")
    bench.add_argument("--sweep-models", nargs="+", help=preset("sweep_models"))
    bench.add_argument("--sweep-batch", type=int, help=preset("sweep_batch"))
    bench.add_argument("--out", default="runs/bench")
    bench.add_argument("--memory", action="store_true", help="instead: peak memory of explaining --memory-images "
                       "images in chunks of 64 against one chunk (each in a fresh process)")
    bench.add_argument("--memory-images", type=int, help=f"(default {BENCH_MEMORY['memory_images']})")
    bench.add_argument("--memory-models", nargs="+", help=f"(default {' '.join(BENCH_MEMORY['memory_models'])})")
    bench.add_argument("--load", action="store_true", help="instead: load time of each model's bundle and ONNX "
                       "explainer with and without their digest checks")
    bench.add_argument("--load-models", nargs="+", help=f"(default {' '.join(BENCH_LOAD['load_models'])})")
    bench.add_argument("--serve", action="store_true", help="instead: load test of `pathrt serve` (Triton, loopback) "
                       "on the embedded model at each --serve-concurrency, against the same backend in-process")
    bench.add_argument("--distributed", action="store_true", help="instead: Ray explain (1 and 2 actors) and DDP "
                       "training (1 and 2 processes) against one process, in a loopback-only network namespace")
    bench.add_argument("--ray-images", type=int, help=f"(default {BENCH_DISTRIBUTED['ray_images']})")
    bench.add_argument("--ray-block-size", type=int, help=f"(default {BENCH_DISTRIBUTED['ray_block_size']})")
    bench.add_argument("--ddp-steps", type=int, help=f"generator training steps; 0 skips DDP (default "
                       f"{BENCH_DISTRIBUTED['ddp_steps']})")
    bench.add_argument("--serve-concurrency", nargs="+", type=int,
                       help=f"requests in flight (default {' '.join(map(str, BENCH_SERVE['serve_concurrency']))})")
    bench.add_argument("--serve-duration", type=float,
                       help=f"seconds per level (default {BENCH_SERVE['serve_duration']})")
    bench.add_argument("--serve-queue-delay-us", type=int, help="the dynamic batcher's queue delay (default "
                       f"{BENCH_SERVE['serve_queue_delay_us']})")
    bench.set_defaults(run=_cmd_bench)

    prof = sub.add_parser("profile", help="per-phase and per-op breakdown of one batch on any backend, with a "
                          "Perfetto/chrome://tracing trace")
    prof.add_argument("--model", default="embedded", help="embedded (trained by `make demo` when cached) or a "
                      "torchvision architecture at 64x64 (default embedded)")
    prof.add_argument("--backend", default="auto", choices=BACKENDS)
    prof.add_argument("--batch", type=int, default=64)
    prof.add_argument("--warmup", type=int, default=3)
    prof.add_argument("--repeats", type=int, default=10)
    prof.add_argument("--sparsity", type=float, default=0.6, help="of the untrained generators (default 0.6)")
    prof.add_argument("--workdir", default="runs/demo", help="where `make demo` cached the trained embedded model")
    prof.add_argument("--ops", type=int, default=25, help="rows of the op table (the session's steps are ops "
                      "named pathrt.plain.<module>, pathrt.pathway.<module> and pathrt.tail.<module>; default 25)")
    prof.add_argument("--out", default="runs/profile")
    prof.set_defaults(run=_cmd_profile)

    demo = sub.add_parser("demo", help="the main job on the embedded default data set")
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--retrain", action="store_true", help="train the target and generator again even if cached")
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--no-faithfulness", action="store_true", help="leave the report's Faithfulness section out")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pathrt` command."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # explain's chunk loop is where the heap grows (pathrt.heap, with its cost). The setting holds for the
    # whole process, so only the command's own process takes it: a program (or test run) that calls
    # main() keeps its allocator, as it keeps its wait policy (pathrt.threads).
    if args.command == "explain" and invoked_as_command():
        limit_heap_growth()
    try:
        args.run(args)
    except (PathrtError, OSError, KeyboardInterrupt) as exc:
        if args.debug:
            raise
        if isinstance(exc, KeyboardInterrupt):
            print(f"pathrt {args.command}: interrupted; finished outputs are kept", file=sys.stderr)
            return 130
        code = exit_code(exc) if isinstance(exc, PathrtError) else 6
        print(f"pathrt {args.command}: error: {exc}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    status = main()
    if "pathrt.ddp" in sys.modules:  # `pathrt train` ran here: as a rank torchrun started, end it at once
        from pathrt.ddp import exit_rank

        exit_rank(status)
    sys.exit(status)
