"""`Explainer`: the explain path (SPEC §8) over a target and its GEN-CNP generator.

One plain pass of the canonized target captures the pathway-layer features, the generator turns
them into per-input pathways (masks = scores >= 0.5), and one pathway pass gives H(x; P). Images
go in as the target model takes them (normalized: see `Target.preprocess`). Large batches are
processed in chunks of `max_batch_size`. The eager backend (module hooks) is the reference; the
other backends (`pathrt.runtime.backends`: one object per backend, behind one protocol) run the
same computation hook-free and are tested against it; `auto` picks the first usable one and
records why (`Explainer.backend_reason`, `Explanation.backend_reason`). Each chunk's images are
checked once, here (`chunks`); the backends trust them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from pathrt.errors import IncompatibleArtifactError, InputError
from pathrt.generator import PathwayGenerator, load_generator
from pathrt.runtime.backends import (
    CHECKS_IMAGES,
    CONCURRENT,
    MASKS,
    REGISTRY,
    Backend,
    BackendContext,
    BackendOptions,
    select,
)
from pathrt.runtime.explanation import Explanation
from pathrt.runtime.ops import pack_masks
from pathrt.targets import Target, load_target, pathway_forward
from pathrt.targets.pathway import Masks, check_images, normalize_fill, normalize_masks

ClassSpec = int | Sequence[int] | torch.Tensor | None
_T = TypeVar("_T")


class Explainer:
    """Explains a target's predictions with the pathways its generator produces.

    backend: "auto" (default: the first of session, native, triton, eager that can run this model
    here; the choice and its reason are in `backend` / `backend_reason`), "eager" (the hook-based
    reference), "native" (C++/CUDA kernels), "triton" (GPU), "onnx" (ONNX Runtime: the explainer
    exported in memory, or `onnx_file` from `pathrt export`) or "session" (the whole path in C++
    through `pathrt._C.ExplainSession`: the model bundled in memory, or `bundle_file` from
    `pathrt bundle`). `engine` is the backend object (`pathrt.runtime.backends.Backend`: name,
    device, capabilities, reason). Pathway gradients always run eager; `explain_with_masks` runs on
    the backend when it has that capability (onnx computes its own masks), else eager.
    """

    def __init__(self, target: Target, generator: PathwayGenerator, backend: str = "auto",
                 max_batch_size: int = 256, onnx_file: str | os.PathLike[str] | None = None,
                 bundle_file: str | os.PathLike[str] | None = None, allow_other_target: bool = False,
                 num_threads: int = 0) -> None:
        """`allow_other_target`: explain with a generator trained for other weights of the same layout
        (e.g. to study a fine-tuned model); refused by default, since its pathways are not this model's.
        `num_threads`: the threads one call of the session or onnx backend uses (0: torch's count); set 1
        per worker when several workers share a host (README "Threads"). The Python-side backends run
        on torch's threads (`torch.set_num_threads`)."""
        if generator.spec != target.spec:
            raise IncompatibleArtifactError("the generator was built for another pathway spec than the target's")
        trained_for = generator.target_fingerprint
        if trained_for is not None and not allow_other_target and trained_for != target.fingerprint:
            raise IncompatibleArtifactError(
                f"the generator was trained for the target with weights fingerprint {trained_for[:12]}…, not for "
                f"these weights ({target.fingerprint[:12]}…): train a generator for this target, or pass "
                "allow_other_target=True to explain with it anyway")
        if num_threads < 0:
            raise InputError(f"num_threads must be >= 0 (0: torch's thread count), got {num_threads}")
        if max_batch_size < 1:
            raise InputError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if onnx_file is not None and backend != "onnx":
            raise InputError("onnx_file is only used by backend='onnx'")
        if bundle_file is not None and backend != "session":
            raise InputError("bundle_file is only used by backend='session'")
        self.target = target
        self.spec = target.spec
        self.generator = generator.eval()
        self.max_batch_size = max_batch_size
        # one canonized copy, one plan lowering and one hooks lock, shared by every backend tried
        self._context = BackendContext(target, self.generator, BackendOptions(onnx_file, bundle_file, num_threads))
        self.engine, self.backend_reason = select(backend, self._context)
        self.backend = self.engine.name
        self._reference: Backend | None = self.engine if self.engine.name == "eager" else None

    @property
    def model(self) -> nn.Module:
        """The canonized copy of the target's model the backends run (the user's model stays untouched).
        Code that installs hooks on it must hold `using_model()`."""
        return self._context.model

    @contextmanager
    def using_model(self) -> Iterator[nn.Module]:
        """The canonized model, held exclusively: the eager paths and the baselines install forward hooks
        on it, so one such call at a time may use it (the other backends keep their state local)."""
        with self._context.hooks_lock:
            yield self._context.model

    @property
    def reference(self) -> Backend:
        """The eager backend on this Explainer's model (the engine itself when it is eager)."""
        if self._reference is None:
            self._reference = REGISTRY["eager"].prepare(self._context)  # type: ignore[assignment]
        return self._reference  # type: ignore[return-value]

    @classmethod
    def from_files(cls, target_path: str | os.PathLike[str], generator_path: str | os.PathLike[str],
                   **kwargs) -> Explainer:
        """Loads a target and its generator (refusing a generator trained for another target)."""
        target = load_target(target_path)
        generator, _ = load_generator(generator_path, target_fingerprint=target.fingerprint, spec=target.spec)
        return cls(target, generator, **kwargs)

    def resolve_classes(self, target: ClassSpec, logits: torch.Tensor,
                        predicted: torch.Tensor | None = None) -> torch.Tensor:
        """The explained class per row: `target` checked and broadcast, or the prediction when None
        (`predicted` when the backend computed it, else the logits' argmax)."""
        if target is None:
            return predicted if predicted is not None else logits.argmax(1)
        classes = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
        if classes.numel() == 1:
            classes = classes.expand(len(logits))
        if classes.numel() != len(logits):
            raise InputError(f"target names {classes.numel()} classes for {len(logits)} images")
        if classes.min() < 0 or classes.max() >= logits.shape[1]:
            raise InputError(f"target classes must lie in [0, {logits.shape[1]}), got {classes.tolist()[:8]}")
        return classes.clone()

    def batches(self, images: torch.Tensor) -> list[slice]:
        """Row ranges of at most max_batch_size images (validates the batch)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"images must be a (N, C, H, W) tensor, got {shape}")
        if len(images) == 0:
            raise InputError("images is an empty batch (N = 0)")
        return [slice(s, s + self.max_batch_size) for s in range(0, len(images), self.max_batch_size)]

    def chunks(self, images: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """(rows, images[rows]) per chunk, cast to the model's floating dtype (float64/float16 images
        give the float32 result). The whole batch is checked first (`check_images`: shape, dtype,
        finite values, scanned a chunk at a time), so a bad image fails the call before any output."""
        dtype = self._context.dtype
        for rows in self.checked_batches(images):
            yield rows, images[rows].to(dtype)

    def checked_batches(self, images: torch.Tensor) -> list[slice]:
        """`batches`, after checking the whole batch (device, then `check_images`)."""
        bounds, device = self.batches(images), self._context.device
        if images.device != device:
            raise InputError(f"images are on {images.device}, the model on {device}; move them with .to('{device}')")
        check_images(images, self.spec, chunk=self.max_batch_size)
        return bounds

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """H's predicted class per image (int64 (N,)): the plain pass in chunks, holding the model."""
        out = []
        for _, x in self.chunks(images):
            with self.using_model() as model:
                out.append(model(x).argmax(1))
        return torch.cat(out)

    @staticmethod
    def rows_of(target: ClassSpec, rows: slice) -> ClassSpec:
        """The part of a per-sample class list that belongs to `rows` (a single class stays as is)."""
        if isinstance(target, torch.Tensor | Sequence) and torch.as_tensor(target).numel() > 1:
            return torch.as_tensor(target).reshape(-1)[rows]
        return target

    @torch.no_grad()
    def explain(self, images: torch.Tensor, target: ClassSpec = None) -> Explanation:
        """Pathways for `images` (N, C, H, W), explaining class `target` (default: H's prediction).
        Runs in chunks of max_batch_size; memory beyond one chunk's is the result itself."""
        dtype = self._context.dtype
        if (isinstance(images, torch.Tensor) and images.dim() == 4 and 0 < images.shape[0] <= self.max_batch_size
                and images.dtype == dtype and CHECKS_IMAGES in self.engine.capabilities):
            # one chunk the backend checks itself, the low-latency case: no second check, no assembly
            # (each torch op here costs 10-30 us after a call has left the caches cold; so does len(images),
            # a Python method of torch.Tensor; anything else goes the way below, which says what is wrong)
            return self._explain_chunk(images, target)
        bounds = self.checked_batches(images)
        if len(bounds) == 1:  # one chunk: no assembly, no slicing
            return self._explain_chunk(images.to(dtype), target)
        return Explanation.assemble((self._explain_chunk(images[rows].to(dtype), self.rows_of(target, rows))
                                     for rows in bounds), len(images))

    def explain_iter(self, images: torch.Tensor, target: ClassSpec = None) -> Iterator[Explanation]:
        """`explain` one chunk of max_batch_size images at a time, for results too large to hold (save
        or reduce each chunk as it comes): memory stays that of one chunk whatever N is."""
        with torch.no_grad():
            for rows, x in self.chunks(images):
                yield self._explain_chunk(x, self.rows_of(target, rows))

    def _explain_chunk(self, x: torch.Tensor, target: ClassSpec) -> Explanation:
        out = self._run(self.engine, lambda: self.engine.explain(x))
        return Explanation.of_backend(self.spec, out.masks, out.packed, out.scores, out.logits, out.pathway_logits,
                                      self.resolve_classes(target, out.logits, out.predicted), self.backend,
                                      self.backend_reason)

    def _run(self, backend: Backend, call: Callable[[], _T]) -> _T:
        """`call()`, holding the hooks lock unless `backend` keeps its state local."""
        if CONCURRENT in backend.capabilities:
            return call()
        with self._context.hooks_lock:
            return call()

    @torch.no_grad()
    def explain_with_masks(self, images: torch.Tensor, masks: Masks, target: ClassSpec = None,
                           label: str = "given", fill: torch.Tensor | None = None) -> Explanation:
        """An Explanation for pathways chosen elsewhere (baselines, class pathways); scores = masks.
        `fill` (K,): mean ablation, a removed neuron's channel holds fill[k] instead of 0 (e.g.
        `target.channel_means`); the pathway pass then reads every input channel (dense convs)."""
        flat = torch.cat(normalize_masks(masks, self.spec, len(images)), 1).bool().expand(len(images), -1)
        if fill is not None:  # checked once here; the backends split it per layer
            fill = torch.cat(normalize_fill(fill, self.spec)).to(self._context.device)
        backend = self.engine if MASKS in self.engine.capabilities else self.reference
        reason = f"pathway pass on {backend.name}" + (", mean ablation" if fill is not None else "")

        def chunk_of(rows: slice, x: torch.Tensor) -> Explanation:
            chunk, classes = flat[rows].contiguous(), self.rows_of(target, rows)
            logits, pathway_logits = self._run(backend, lambda: backend.explain_with_masks(x, chunk, fill))
            return Explanation(self.spec, chunk, pack_masks(chunk), chunk.float(), logits, pathway_logits,
                               self.resolve_classes(classes, logits), label, reason)

        return Explanation.assemble((chunk_of(rows, x) for rows, x in self.chunks(images)), len(images))

    def pathway_gradient(self, images: torch.Tensor, explanation: Explanation) -> torch.Tensor:
        """∂z_c(x; P)/∂x through the pathway model (SPEC §7): (N, C, H, W), the saliency of any pathway."""
        if torch.is_inference_mode_enabled():
            raise InputError("pathway_gradient needs autograd, which torch.inference_mode() turns off; call it "
                             "outside inference mode (torch.no_grad() around the rest is fine)")
        if len(explanation) != len(images):
            raise InputError(f"{len(images)} images but an explanation of {len(explanation)}")
        grads = []
        for rows, x in self.chunks(images):
            with torch.enable_grad(), self.using_model() as model:
                x = x.detach().clone().requires_grad_(True)
                logits = pathway_forward(model, self.spec, x, explanation.masks[rows], check=False)
                chosen = logits.gather(1, explanation.classes[rows, None]).sum()
                (grad,) = torch.autograd.grad(chosen, x)
            grads.append(grad)
        return torch.cat(grads)


def saliency_map(gradient: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) input gradient → (N, H, W) saliency: max |gradient| over channels."""
    return gradient.abs().amax(1)
