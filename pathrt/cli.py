"""The `pathrt` command line: info, train-target, demo.

Errors pathrt raises on purpose print one line on stderr and exit with code 2 (`--debug` shows
the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pathrt.errors import PathrtError


def _cmd_info(args: argparse.Namespace) -> None:
    from pathrt.runtime.info import environment, format_environment

    env = environment()
    print(json.dumps(env, indent=2) if args.json else format_environment(env))


def _cmd_train_target(args: argparse.Namespace) -> None:
    from pathrt import data
    from pathrt.targets.training import TargetTrainingConfig, train_target

    if args.image_folder:
        full = data.load_image_folder(args.image_folder, args.size).materialize()
        train_idx, test_idx = data.stratified_split(full.labels.numpy(), args.test_fraction, args.seed)
        train, test = full.subset(train_idx, f"{full.name}-train"), full.subset(test_idx, f"{full.name}-test")
    elif args.cifar10:
        train, test = data.load_cifar10(args.cifar10, "train"), data.load_cifar10(args.cifar10, "test")
    else:
        train, test = data.load_digits("train"), data.load_digits("test")
    config = TargetTrainingConfig(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  seed=args.seed)
    target = train_target(train, test, config, out=args.out, progress=not args.no_progress)
    print(f"test accuracy {100 * target.info['test_accuracy']:.2f}% on {len(test)} images "
          f"after {target.info['train_seconds']} s; saved {Path(args.out)}.safetensors/.json")


def _cmd_demo(args: argparse.Namespace) -> None:
    from pathrt.demo import run_demo

    run_demo(args.workdir, retrain=args.retrain, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pathrt", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of pathrt errors")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="what is built and usable: extension, CUDA kernels, ops")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_cmd_info)

    from pathrt.targets.models import ARCHITECTURES

    train = sub.add_parser("train-target", help="train a target classifier (default: small VGG on digits)")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--image-folder", metavar="DIR", help="train on DIR/<class>/<image> (20%% held out)")
    source.add_argument("--cifar10", metavar="DIR", help="train on CIFAR-10 (python format) in DIR")
    train.add_argument("--arch", default="small_vgg", choices=ARCHITECTURES)
    train.add_argument("--size", type=int, default=32, help="image size for --image-folder (default 32)")
    train.add_argument("--test-fraction", type=float, default=0.2)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default="runs/target", help="artifact stem (default runs/target)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=_cmd_train_target)

    demo = sub.add_parser("demo", help="the main job on the embedded default data set")
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--retrain", action="store_true", help="train the target again even if cached")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pathrt` command."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except PathrtError as exc:
        if args.debug:
            raise
        print(f"pathrt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
