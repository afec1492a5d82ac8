"""Trains a tiny generator for tests/test_distributed.py, under torchrun (one process per rank) or alone.

Writes into --out, beside the run's checkpoints (stem `gen`): `rank<r>.safetensors`, the rank's final
generator weights, and `writes-rank<r>.json`, every file pathrt itself wrote from that rank.
`--kill-at K` SIGKILLs rank 1 (or the single process) after step K, as an OOM killer would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from safetensors.torch import save_file

import pathrt.artifacts
import pathrt.training
from pathrt.data import load_digits
from pathrt.ddp import World
from pathrt.generator import GeneratorConfig
from pathrt.targets import create_target
from pathrt.training import GeneratorTrainingConfig, train_generator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    world = World.from_env()
    torch.set_num_threads(1)
    writes: list[str] = []
    real = pathrt.artifacts.atomic_write

    def recording(path, write):  # every checkpoint and artifact pathrt writes goes through atomic_write
        writes.append(str(path))
        return real(path, write)

    pathrt.artifacts.atomic_write = recording
    pathrt.training.atomic_write = recording
    torch.manual_seed(0)
    target = create_target("small_vgg", 10, (3, 32, 32), cfg=(8, "M", 16, "M"), hidden=16)
    train, val = load_digits("train").subset(range(192)), load_digits("test").subset(range(37))
    config = GeneratorTrainingConfig(steps=args.steps, batch_size=32, val_every=4, checkpoint_every=4, lambda_sp=5.0)
    generator_config = GeneratorConfig.small(d=32, heads=4, d_r=8, dropout=args.dropout, head_bias=0.0)

    def kill(step: int, _stats: dict[str, float]) -> None:
        if step == args.kill_at and world.rank == min(1, world.size - 1):
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        generator, history = train_generator(target, train, val, generator_config, config, out=args.out / "gen",
                                             resume=args.resume, progress=False, callback=kill, world=world)
    finally:
        world.close()
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()},
              str(args.out / f"rank{world.rank}.safetensors"))
    (args.out / f"writes-rank{world.rank}.json").write_text(json.dumps({"writes": writes, "history": history}))


if __name__ == "__main__":
    main()
