"""Training the GEN-CNP generator (`pathrt train`, SPEC §4), the target frozen.

Per step: plain pass of the canonized target (no grad) → features and teacher p = softmax(z/τ);
generator → scores s → DAQ masks m̃; pathway pass z̃ = H(x; m̃) with gradients into the generator
only; loss τ²·KL(p ‖ softmax(z̃/τ)) + λ_sp(t)·L_sp with L_sp = mean s² ("l2") or mean s ("l1").
AdamW, cosine schedule with linear warm-up, λ_sp ramped from 0, gradient clipping, seeded.

Checkpoints: the generator artifact `<stem>` (see pathrt.generator) and, for `--resume`, one
training-state file `<stem>.train.safetensors` holding generator weights, optimizer moments, RNG
state and (in its metadata) step, config and history: a single atomic file, so it is never torn.
The batch order is a function of (seed, epoch), so a resumed run reproduces an uninterrupted one.

Under torchrun (`pathrt train --nproc N`, see pathrt.ddp) the generator alone is wrapped in DDP (the
frozen target never is): each rank trains on its share of the same global batch, validates its
share of the validation set (metrics over every image once, without the sampler's padding), and
rank 0 writes the checkpoints, holding every rank's RNG state so that `--resume` stays exact.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from torch.utils.data import DistributedSampler

from pathrt.artifacts import artifact_paths, atomic_write, check_state, parse_json, tensor_fingerprint
from pathrt.data import TensorImageDataset
from pathrt.ddp import GlobalBatchNorm, World, convert_batchnorms
from pathrt.errors import ArtifactError, IncompatibleArtifactError, InputError
from pathrt.fidelity import fidelity, fidelity_breakdown
from pathrt.generator import GeneratorConfig, PathwayGenerator, save_generator
from pathrt.progress import progress_bar
from pathrt.schemas import validate
from pathrt.targets import Target, canonized_copy, capture_features, pathway_forward


@dataclass(frozen=True)
class GeneratorTrainingConfig:
    """Hyperparameters of generator training (SPEC §4 defaults for small models)."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    ramp_fraction: float = 0.1
    lambda_sp: float = 1.0
    sparsity_loss: str = "l2"
    tau: float = 1.0
    clip: float = 1.0
    seed: int = 0
    val_every: int = 100
    checkpoint_every: int = 100
    # Training to a fidelity: at every validation, λ_sp is scaled by exp(fidelity_gain · (balanced
    # validation fidelity − target_fidelity)) (hard masks; a multiplicative dual step: below the target
    # the sparsity pressure falls, above it rises), and the run ends with the sparsest validated
    # generator whose balanced fidelity meets the target. None: plain training with a fixed λ_sp.
    target_fidelity: float | None = None
    fidelity_gain: float = 4.0

    def __post_init__(self) -> None:
        if self.target_fidelity is not None and not 0 < self.target_fidelity <= 1:
            raise InputError(f"target_fidelity is a fraction in (0, 1] (e.g. 0.95), got {self.target_fidelity}")
        if min(self.steps, self.batch_size, self.val_every, self.checkpoint_every) < 1 or self.lr <= 0 \
                or self.tau <= 0 or self.lambda_sp < 0:
            raise InputError(f"invalid training config {self}")
        if self.sparsity_loss not in ("l1", "l2"):
            raise InputError(f"sparsity_loss must be 'l1' or 'l2', got {self.sparsity_loss!r}")

    def lr_factor(self, step: int) -> float:
        warmup = max(1, round(self.warmup_fraction * self.steps))
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, self.steps - warmup)))

    def lambda_at(self, step: int) -> float:
        ramp = max(1, round(self.ramp_fraction * self.steps))
        return self.lambda_sp * min(1.0, step / ramp)


TRAINING_STATE_FORMAT = "pathrt.training_state"


def _state_path(stem: Path) -> Path:
    return artifact_paths(stem)[0].with_suffix(".train.safetensors")


class _Batches:
    """This rank's share of each step's global batch. The global batch is a function of (seed, epoch,
    step) alone: positions [k·B, (k+1)·B) of a permutation of the data per epoch (DistributedSampler's,
    seeded seed·1_000_003 + epoch; the last partial batch dropped), of which rank r takes every W-th
    position from r: the same images a single process trains on at that step, whatever W."""

    def __init__(self, n: int, batch_size: int, seed: int, world: World) -> None:
        if batch_size % world.size:
            raise InputError(f"--batch-size {batch_size} does not split evenly over {world.size} processes; "
                             "choose a multiple of --nproc")
        self.per_epoch = max(1, n // batch_size)
        self.local = batch_size // world.size
        self.sampler = DistributedSampler(range(n), num_replicas=world.size, rank=world.rank, shuffle=True,
                                          seed=seed * 1_000_003)
        self.epoch, self.order = -1, []

    def __call__(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            self.sampler.set_epoch(epoch)
            self.epoch, self.order = epoch, list(self.sampler)
        return torch.tensor(self.order[position * self.local:(position + 1) * self.local], dtype=torch.long)


ONE_PROCESS = World()


def _rng_key(rank: int) -> str:
    return "rng.torch" if rank == 0 else f"rng.torch.rank{rank}"


def _save_state(path: Path, generator: PathwayGenerator, optimizer: torch.optim.Optimizer,
                meta: dict[str, Any], rng_states: list[torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tensors = {f"generator.{k}": v.detach().clone().contiguous() for k, v in generator.state_dict().items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).clone().contiguous()
    for rank, state in enumerate(rng_states):
        tensors[_rng_key(rank)] = state
    metadata = {"pathrt": json.dumps({**meta, "world_size": len(rng_states), "param_groups": opt["param_groups"],
                                      "fingerprint": tensor_fingerprint(tensors)})}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_training_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a `--resume` training state: (tensors, schema-checked metadata); ArtifactError if unreadable.
    The tensors are checked against a run's generator and optimizer when it resumes from them."""
    return _load_state(Path(path))


def _load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("pathrt", "")
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118  (safe_open API)
    except Exception as exc:  # safetensors raises several types for corrupted files
        raise ArtifactError(f"{path} is not a readable training state ({exc}); start without --resume") from exc
    meta = parse_json(raw, str(path))
    validate(meta, TRAINING_STATE_FORMAT, str(path))
    actual = tensor_fingerprint(tensors)
    if actual != meta["fingerprint"]:
        raise ArtifactError(f"{path} was modified after it was written (its tensors' digest is {actual[:12]}…, the "
                            f"file records {meta['fingerprint'][:12]}…); start without --resume")
    return tensors, meta


def _restore(path: Path, tensors: dict[str, torch.Tensor], saved: dict[str, Any], generator: PathwayGenerator,
             optimizer: torch.optim.Optimizer, world: World = ONE_PROCESS) -> None:
    """Loads generator weights, optimizer moments and this rank's RNG state of a training state file,
    each checked against what this run built (ArtifactError for anything that does not fit)."""
    if int(saved.get("world_size", 1)) != world.size:
        raise IncompatibleArtifactError(f"{path} was written by a run of {saved.get('world_size', 1)} processes; "
                                        f"resume it with --nproc {saved.get('world_size', 1)}, not {world.size}")
    weights = {k[len("generator."):]: v for k, v in tensors.items() if k.startswith("generator.")}
    check_state(generator.state_dict(), weights, str(path), "the generator of this run")
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    params = list(generator.parameters())
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            match = re.fullmatch(r"optimizer\.(\d{1,6})\.(step|exp_avg|exp_avg_sq)", key)
            if match is None or int(match[1]) >= len(params):
                raise ArtifactError(f"{path} holds an unknown optimizer tensor {key[:80]!r}")
            index, name = match[1], match[2]
            if name != "step" and value.shape != params[int(index)].shape:
                raise ArtifactError(f"{path}: optimizer tensor {key!r} has shape {tuple(value.shape)}, its "
                                    f"parameter {tuple(params[int(index)].shape)}")
            opt_state.setdefault(int(index), {})[name] = value
    rng = tensors.get(_rng_key(world.rank))
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise ArtifactError(f"{path} holds no valid RNG state")
    try:
        generator.load_state_dict(weights)
        optimizer.load_state_dict({"state": opt_state, "param_groups": saved["param_groups"]})
        torch.set_rng_state(rng)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:  # e.g. "Invalid mt19937 state" (found by fuzzing)
        raise ArtifactError(f"{path} holds an optimizer or RNG state that does not fit this run ({exc}); start "
                            "without --resume") from exc


@torch.no_grad()
def _validate(model: torch.nn.Module, target: Target, generator: PathwayGenerator, val: TensorImageDataset,
              world: World) -> dict[str, float]:
    """Validation metrics over every image of `val` once: each rank takes its DistributedSampler share
    (padded to equal shares), the shares are gathered and the padding's repeats dropped by index."""
    generator.eval()
    mine = torch.tensor(list(DistributedSampler(range(len(val)), world.size, world.rank, shuffle=False)))
    plain, pathway, kept = [], [], []
    for start in range(0, len(mine), 256):
        x = target.preprocess(val.images[mine[start:start + 256]])
        capture = capture_features(model, target.spec, x)
        masks = generator(capture.features).masks
        pathway.append(pathway_forward(model, target.spec, x, masks))
        plain.append(capture.logits)
        kept.append(torch.cat(masks, 1).float().mean(1))
    generator.train()
    logits, pathway_logits, kept_ = (torch.empty(len(val), *t[0].shape[1:]) for t in (plain, pathway, kept))
    for index, *parts in world.gather((mine, torch.cat(plain), torch.cat(pathway), torch.cat(kept))):
        for whole, part in zip((logits, pathway_logits, kept_), parts, strict=True):
            whole[index] = part
    return {"val_fidelity": fidelity(logits, pathway_logits), "val_sparsity": 1 - float(kept_.sum()) / len(val),
            "val_balanced_fidelity": fidelity_breakdown(logits, pathway_logits)["balanced_fidelity"]}


def train_generator(
    target: Target,
    train: TensorImageDataset,
    val: TensorImageDataset,
    generator_config: GeneratorConfig | None = None,
    config: GeneratorTrainingConfig | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    world: World | None = None,
) -> tuple[PathwayGenerator, list[dict[str, float]]]:
    """Trains a generator for `target` on `train` (images in [0, 1]); returns it (eval mode) and the
    validation history. Checkpoints go to `out`; `resume=True` continues from `out`'s training state.
    `callback(step, metrics)` runs after every step (raising in it interrupts training). `world`: this
    process's rank (default: torchrun's environment, or one process); see the module docstring."""
    world = world or World.from_env()
    config = config or GeneratorTrainingConfig()
    generator_config = generator_config or GeneratorConfig.small()
    if train.image_shape != target.input_shape:
        raise InputError(f"training images are {train.image_shape}, the target takes {target.input_shape}")
    if len(train) < config.batch_size:
        raise InputError(f"{len(train)} training images are fewer than one batch ({config.batch_size})")
    stem = Path(out) if out is not None else None
    if resume and stem is None:
        raise InputError("resume=True needs the checkpoint path `out`")
    torch.manual_seed(config.seed)
    model = canonized_copy(target.model)
    fingerprint = target.fingerprint
    generator = PathwayGenerator(target.spec, generator_config).train()
    if world.size > 1:
        convert_batchnorms(generator, GlobalBatchNorm)
        if world.rank:  # dropout draws: a stream of its own per rank (rank 0 goes on as a single process)
            torch.manual_seed(config.seed + 1_000_003 * world.rank)
    optimizer = torch.optim.AdamW(generator.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    start_step = 0
    meta = {"config": asdict(config), "generator_config": asdict(generator_config), "target_fingerprint": fingerprint}
    if resume and stem is not None and _state_path(stem).exists():
        tensors, saved = _load_state(_state_path(stem))
        if {k: saved[k] for k in meta} != json.loads(json.dumps(meta)):
            raise IncompatibleArtifactError(f"{_state_path(stem)} belongs to another run (config, generator config "
                                            "or target differ); resume with the same settings or start afresh")
        _restore(_state_path(stem), tensors, saved, generator, optimizer, world)
        start_step, history = int(saved["step"]), list(saved["history"])
        if start_step > config.steps:
            raise IncompatibleArtifactError(f"{_state_path(stem)} is at step {start_step}, beyond --steps "
                                            f"{config.steps}")
    # built after a resume's optimizer state (which holds initial_lr): its first lr is that of start_step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor, last_epoch=start_step - 1)
    controller = _FidelityController(config, history, stem, world.main)
    batches = _Batches(len(train), config.batch_size, config.seed, world)
    trainable: nn.Module = generator
    if world.size > 1:
        trainable = nn.parallel.DistributedDataParallel(generator)

    def checkpoint(step: int) -> None:
        if stem is None:
            return
        rng_states = world.gather(torch.get_rng_state())
        if world.main:
            _save_state(_state_path(stem), generator, optimizer, {**meta, "step": step, "history": history},
                        rng_states)  # type: ignore[arg-type]
            save_generator(generator, stem, fingerprint, {"training": asdict(config), "step": step,
                                                          "history": history})

    bar = progress_bar(config.steps, "train generator", progress and world.main, initial=start_step, unit="step")
    begin = time.perf_counter()
    try:
        for step in range(start_step, config.steps):
            x = target.preprocess(train.images[batches(step)])
            with torch.no_grad():
                capture = capture_features(model, target.spec, x)
                teacher = torch.softmax(capture.logits / config.tau, 1)
            out_ = trainable(capture.features)
            z = pathway_forward(model, target.spec, x, out_.masks)
            kd = F.kl_div(F.log_softmax(z / config.tau, 1), teacher, reduction="batchmean") * config.tau**2
            scores = torch.cat(out_.scores, 1)
            sparsity_term = scores.pow(2).mean() if config.sparsity_loss == "l2" else scores.mean()
            loss = kd + controller.scale * config.lambda_at(step) * sparsity_term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(generator.parameters(), config.clip)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # sparsity of the hard masks the explanations use, not of DAQ's soft ones
                local = torch.stack([loss.double(), kd.double(),
                                     100 * (z.argmax(1) == capture.logits.argmax(1)).double().mean(),
                                     1 - (scores >= generator.config.threshold).double().mean()])
                stats = dict(zip(("loss", "kd", "fidelity", "sparsity"), world.mean(local).tolist(), strict=True))
            done = step + 1
            if done % config.val_every == 0 or done == config.steps:
                history.append({"step": done, **stats, **_validate(model, target, generator, val, world)})
                controller.update(history[-1], generator, fingerprint)
            if done == config.steps:  # before the last checkpoint, so the saved history has it too
                history[-1]["seconds"] = round(time.perf_counter() - begin, 1)
            if done % config.checkpoint_every == 0 or done == config.steps:
                checkpoint(done)
            bar.update(1)
            last = history[-1] if history else {}
            bar.set_postfix(loss=f"{stats['loss']:.3f}", sp=f"{stats['sparsity']:.0%}",
                            val_fid=f"{last.get('val_balanced_fidelity', float('nan')):.0f}%")
            if callback is not None:
                callback(done, stats)
    finally:
        bar.close()
    controller.finish(generator, fingerprint)
    convert_batchnorms(generator, nn.BatchNorm2d)
    generator.target_fingerprint = target.fingerprint
    return generator.eval(), history


def _best_stem(stem: Path) -> Path:
    """Where training to a fidelity keeps the sparsest generator that met the target."""
    return stem.with_name(stem.name + ".best")


class _FidelityController:
    """`target_fidelity` (GeneratorTrainingConfig): the λ_sp scale and the sparsest generator meeting the
    target. Both follow from the history (and `<stem>.best`), so a resumed run continues exactly."""

    def __init__(self, config: GeneratorTrainingConfig, history: list[dict[str, Any]], stem: Path | None,
                 write: bool = True) -> None:
        self.config, self.history, self.stem, self.write = config, history, stem, write
        self.scale = float(history[-1].get("lambda_scale", 1.0)) if history else 1.0
        self.best: dict[str, torch.Tensor] | None = None
        if config.target_fidelity is not None and stem is not None and artifact_paths(_best_stem(stem))[0].exists():
            from pathrt.generator import load_generator

            self.best = load_generator(_best_stem(stem))[0].state_dict()

    def update(self, entry: dict[str, Any], generator: PathwayGenerator, fingerprint: str) -> None:
        """After a validation (`entry`, the history's last): the next λ scale; keep the generator if it
        is the sparsest so far that meets the target."""
        target = self.config.target_fidelity
        if target is None:
            return
        achieved = entry["val_balanced_fidelity"] / 100
        self.scale = min(1e3, max(1e-3, self.scale * math.exp(self.config.fidelity_gain * (achieved - target))))
        entry["lambda_scale"] = self.scale
        kept = [e["val_sparsity"] for e in self.history[:-1] if e.get("best")]
        if achieved >= target and entry["val_sparsity"] > max(kept, default=-1.0):
            entry["best"] = True
            self.best = {k: v.detach().clone() for k, v in generator.state_dict().items()}
            if self.stem is not None and self.write:
                save_generator(generator, _best_stem(self.stem), fingerprint, {"step": entry["step"]})

    def finish(self, generator: PathwayGenerator, fingerprint: str) -> None:
        """Ends with the sparsest generator that met the target (saved as `<stem>` as well); without one,
        the last generator stays and the history's last entry records that the target was not reached."""
        if self.config.target_fidelity is None or not self.history:
            return
        self.history[-1]["target_fidelity_reached"] = self.best is not None
        if self.best is None:
            return
        generator.load_state_dict(self.best)
        chosen = max((e for e in self.history if e.get("best")), key=lambda e: e["val_sparsity"])
        if self.stem is not None and self.write:
            save_generator(generator, self.stem, fingerprint, {"training": asdict(self.config), "chosen_step":
                           chosen["step"], "history": self.history})
