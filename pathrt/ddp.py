"""Data-parallel generator training (PyTorch DDP over gloo): the process world, and BatchNorm whose
statistics span the whole global batch.

`pathrt train --nproc N` runs N copies of itself under torchrun (`torch.distributed.run`); each finds
its rank in torchrun's environment (`World.from_env`). Every step's global batch is the one a single
process would take; rank r trains on its r-th share, DDP averages the gradients, so the update is the
single-process update. The generator's RFE uses BatchNorm, whose training statistics depend on the
batch: `GlobalBatchNorm` all-reduces them (torch's SyncBatchNorm does the same but runs on CUDA
only), so normalisation too sees the global batch. What remains different from one process is the
order of float additions (and dropout's random draws, one stream per rank).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from pathrt.errors import DistributedError


@dataclass(frozen=True)
class World:
    """This process's rank among `size` training processes (size 1: no process group)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints and prints."""
        return self.rank == 0

    @staticmethod
    def from_env(timeout_s: float = 600.0) -> World:
        """The world torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT), joining its gloo process
        group; World() when not started by torchrun."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return World()
        if not dist.is_initialized():
            try:
                dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
            except (RuntimeError, ValueError) as exc:
                raise DistributedError(f"cannot join the training processes' group ({exc}); start with "
                                       "`pathrt train --nproc N` or torchrun") from exc
        return World(dist.get_rank(), dist.get_world_size())

    def close(self) -> None:
        """Leaves the process group, once this rank's collectives are done. Its gloo threads may outlive
        it (they did after DDP training, not without DDP): end the process with `exit_rank`."""
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """`values` averaged over the ranks (unchanged in one process)."""
        if self.size == 1:
            return values
        out = values.clone()
        dist.all_reduce(out)
        return out / self.size

    def gather(self, value: object) -> list[object]:
        """Every rank's `value`, in rank order (a one-element list in one process)."""
        if self.size == 1:
            return [value]
        out: list[object] = [None] * self.size
        dist.all_gather_object(out, value)
        return out


def exit_rank(code: int) -> None:
    """Ends a training process that torchrun started (WORLD_SIZE > 1) with `code`, its streams flushed,
    without the interpreter's finalization; returns in any other process. After DDP training the group's
    gloo worker threads still ran after destroy_process_group (without DDP they end there), and one that
    releases a finished collective's tensors takes the GIL: asked for during finalization, that aborts
    the process (SIGABRT, "terminate called without an active exception", in a rank that had finished;
    4 of 96 `pathrt train --nproc 2` runs beside two busy processes, 0 of 80 ended this way; the thread's
    stack in a core dump: ProcessGroupGloo::runLoop -> ~AsyncAllgatherWork -> decref -> take_gil ->
    pthread_exit)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of a sum over ranks is the sum of the ranks'
    gradients (each rank's loss depends on every rank's inputs through the shared statistics)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch over all ranks (two
    differentiable all-reduces: the mean, then the variance about it); eval mode is BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = [0, 2, 3]
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype)
        total = all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean[None, :, None, None]
        var = all_reduce(centred.pow(2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(factor * mean)
                self.running_var.mul_(1 - factor).add_(factor * var * n / (n - 1))
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorms(module: nn.Module, cls: type[nn.BatchNorm2d]) -> nn.Module:
    """Replaces every BatchNorm2d-like child of `module` by `cls` holding the same parameters and
    running statistics (in place; returns `module`)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and type(child) is not cls:
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorms(child, cls)
    return module


def launch(nproc: int, argv: list[str], threads: int = 1) -> None:
    """Runs `python -m pathrt.cli <argv>` as `nproc` DDP processes on this machine under torchrun
    (standalone rendezvous on a free port of 127.0.0.1, gloo over `lo`, `threads` threads each);
    DistributedError when a process fails (its error is printed above torchrun's)."""
    import subprocess
    import sys

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": str(threads)}
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--module", "pathrt.cli", *argv]
    code = subprocess.run(command, env=env, check=False).returncode
    if code:
        raise DistributedError(f"a training process failed (torchrun exited {code}; its error is printed above); "
                               "`--resume` continues from the last checkpoint")
