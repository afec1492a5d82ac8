"""`Explainer`: the explain path (SPEC §8) over a target and its GEN-CNP generator.

One plain pass of the canonized target captures the pathway-layer features, the generator turns
them into per-input pathways (masks = scores >= 0.5), and one pathway pass gives H(x; P). Images
go in as the target model takes them (normalized: see `Target.preprocess`). Large batches are
processed in chunks of `max_batch_size`. The eager backend (module hooks) is the reference; the
native and triton backends run the same computation hook-free over a lowered plan with fused
kernels (`pathrt.runtime.fast_path`) and are tested against it; `auto` picks the fastest usable
one and records why (`Explainer.backend_reason`, `Explanation.backend_reason`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence

import torch

from pathrt.errors import IncompatibleArtifactError, InputError
from pathrt.generator import PathwayGenerator, load_generator
from pathrt.runtime.backends import BackendChoice, choose_backend, onnx_session, open_session
from pathrt.runtime.bundle import BundleError
from pathrt.runtime.explanation import Explanation
from pathrt.runtime.fast_path import NATIVE, folded_generator
from pathrt.runtime.generator_ops import FusedGenerator
from pathrt.runtime.ops import pack_masks
from pathrt.targets import Target, canonized_copy, capture_features, load_target, pathway_forward
from pathrt.targets.pathway import Masks, check_images, normalize_masks

ClassSpec = int | Sequence[int] | torch.Tensor | None


class Explainer:
    """Explains a target's predictions with the pathways its generator produces.

    backend: "auto" (default: session on CPU, else native where the extension and the model's plan
    allow, else eager; the choice and its reason are in `backend` / `backend_reason`), "eager" (the
    hook-based reference), "native" (C++/CUDA kernels), "triton" (GPU), "onnx" (ONNX Runtime: the
    explainer exported in memory, or `onnx_file` from `pathrt export`) or "session" (the whole path
    in C++ through `pathrt._C.ExplainSession`: the model bundled in memory, or `bundle_file` from
    `pathrt bundle`). Pathway gradients always run eager; `explain_with_masks` runs on the native
    plan where it can (the onnx graph and the session compute their own masks), else eager.
    """

    def __init__(self, target: Target, generator: PathwayGenerator, backend: str = "auto",
                 max_batch_size: int = 256, onnx_file: str | os.PathLike[str] | None = None,
                 bundle_file: str | os.PathLike[str] | None = None) -> None:
        if generator.spec != target.spec:
            raise IncompatibleArtifactError("the generator was built for another pathway spec than the target's")
        if max_batch_size < 1:
            raise InputError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.target = target
        self.spec = target.spec
        self.generator = generator.eval()
        self.max_batch_size = max_batch_size
        self.model = canonized_copy(target.model)  # the user's model stays untouched
        # the eager paths install forward hooks on the shared model: one call at a time may use them
        # (the session, native and onnx paths keep all per-call state local and run concurrently)
        self._hooks_lock = threading.Lock()
        self._onnx = self._session = None
        if onnx_file is not None and backend != "onnx":
            raise InputError("onnx_file is only used by backend='onnx'")
        if bundle_file is not None and backend != "session":
            raise InputError("bundle_file is only used by backend='session'")
        if backend == "onnx":
            self._onnx, reason = onnx_session(target, generator, onnx_file)
            choice = BackendChoice("onnx", f"requested; {reason}", None)
        else:
            choice = self._open_session(target, generator, backend, bundle_file)
        self.backend, self.backend_reason, self._runner = choice.name, choice.reason, choice.runner
        # the fast path runs the generator with its BatchNorms folded too; native on CPU through the
        # fused generator ops the session runs (their CUDA kernels have not run on a GPU yet). A session
        # runs its own generator: its plan runner only serves explain_with_masks.
        fast = self._runner is not None and self._session is None
        self._fast_generator = folded_generator(generator) if fast else self.generator
        param = next(iter(self.model.parameters()), None)
        on_cpu = param is None or param.device.type == "cpu"
        self._fused = (FusedGenerator(self._fast_generator, torch.ops.pathrt)
                       if fast and self._runner.kernels is NATIVE and on_cpu else None)  # type: ignore[union-attr]

    def _open_session(self, target: Target, generator: PathwayGenerator, backend: str,
                      bundle_file: str | os.PathLike[str] | None) -> BackendChoice:
        """The session backend when asked for (or for auto, when it can run this model); the native plan
        runner still serves `explain_with_masks`."""
        fallback = "native" if backend == "session" else backend
        why_not = ""
        if backend in ("session", "auto"):
            try:
                self._session, reason = open_session(target, generator, bundle_file)
            except (InputError, BundleError) as exc:
                if backend == "session":
                    raise
                why_not = f"session: {exc}; "
            else:
                try:
                    runner = choose_backend(fallback, self.model, self.spec, generator.config.threshold).runner
                except InputError:
                    runner = None
                prefix = "requested; " if backend == "session" else "auto: "
                return BackendChoice("session", prefix + reason, runner)
        choice = choose_backend(fallback, self.model, self.spec, generator.config.threshold)
        return BackendChoice(choice.name, choice.reason.replace("auto: ", f"auto: {why_not}", 1), choice.runner)

    @classmethod
    def from_files(cls, target_path: str | os.PathLike[str], generator_path: str | os.PathLike[str],
                   **kwargs) -> Explainer:
        """Loads a target and its generator (refusing a generator trained for another target)."""
        target = load_target(target_path)
        generator, _ = load_generator(generator_path, target_fingerprint=target.fingerprint, spec=target.spec)
        return cls(target, generator, **kwargs)

    def resolve_classes(self, target: ClassSpec, logits: torch.Tensor) -> torch.Tensor:
        """The explained class per row: `target` checked and broadcast, or the prediction when None."""
        if target is None:
            return logits.argmax(1)
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
        """(rows, images[rows]) per chunk, each checked (`check_images`: shape, finite values) and cast
        to the model's floating dtype (float64/float16 images give the float32 result)."""
        param = next(iter(self.model.parameters()), None)
        device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
        for rows in self.batches(images):
            x = images[rows]
            if x.device != device:
                raise InputError(f"images are on {x.device}, the model on {device}; move them with .to('{device}')")
            check_images(x, self.spec)
            yield rows, x.to(dtype)

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
        return Explanation.assemble(self.explain_iter(images, target), len(images))

    def explain_iter(self, images: torch.Tensor, target: ClassSpec = None) -> Iterator[Explanation]:
        """`explain` one chunk of max_batch_size images at a time, for results too large to hold (save
        or reduce each chunk as it comes): memory stays that of one chunk whatever N is."""
        with torch.no_grad():
            for rows, x in self.chunks(images):
                yield self._explain_chunk(x, self.rows_of(target, rows))

    def _explain_chunk(self, x: torch.Tensor, target: ClassSpec) -> Explanation:
        if self._session is not None:
            return self._explain_session(x, target)
        if self._runner is not None:
            return self._explain_fast(x, target)
        if self._onnx is not None:
            return self._explain_onnx(x, target)
        with self._hooks_lock:
            capture = capture_features(self.model, self.spec, x)
            out = self.generator(capture.features)
            masks = torch.cat(out.masks, 1)
            return self._finish(x, capture.logits, masks, torch.cat(out.scores, 1), target, self.backend)

    def _explain_fast(self, x: torch.Tensor, target: ClassSpec) -> Explanation:
        """SPEC §8 without hooks: plan pass with capture, generator + fused DAQ, sparse pathway pass."""
        runner = self._runner
        assert runner is not None
        logits, features, saved = runner.plain(x)
        if self._fused is not None:
            _, scores, masks, packed, _ = self._fused(features)
        else:
            head = torch.cat(self._fast_generator.head_logits(features), 1)
            scores, masks, packed, _ = runner.kernels.daq_threshold_pack(head)
        pathway_logits = runner.pathway(saved, features, self.spec.split(masks))
        return Explanation(self.spec, masks, packed, scores, logits, pathway_logits,
                           self.resolve_classes(target, logits), self.backend, self.backend_reason)

    def _explain_session(self, x: torch.Tensor, target: ClassSpec) -> Explanation:
        """The whole path in C++ (pathrt._C.ExplainSession); `chunks` checked the images (CPU, float32)."""
        out = self._session.explain(x)  # type: ignore[union-attr]
        logits = out["logits"]
        return Explanation(self.spec, out["masks"], out["packed"], out["scores"], logits, out["pathway_logits"],
                           self.resolve_classes(target, logits), self.backend, self.backend_reason)

    def _explain_onnx(self, x: torch.Tensor, target: ClassSpec) -> Explanation:
        """The exported explainer graph in ONNX Runtime (CPU tensors in and out; `chunks` checked the
        images, including the spatial size the file was exported for)."""
        out = self._onnx.run(x)  # type: ignore[union-attr]  (cast to the file's dtype there)
        device = x.device
        masks, logits = out["masks"].to(device), out["logits"].to(device)
        return Explanation(self.spec, masks, pack_masks(masks), out["scores"].to(device), logits,
                           out["pathway_logits"].to(device), self.resolve_classes(target, logits), self.backend,
                           self.backend_reason)

    @torch.no_grad()
    def explain_with_masks(self, images: torch.Tensor, masks: Masks, target: ClassSpec = None,
                           label: str = "given") -> Explanation:
        """An Explanation for pathways chosen elsewhere (baselines, class pathways); scores = masks."""
        flat = torch.cat(normalize_masks(masks, self.spec, len(images)), 1).bool().expand(len(images), -1)

        def chunk_of(rows: slice, x: torch.Tensor) -> Explanation:
            chunk, classes = flat[rows].contiguous(), self.rows_of(target, rows)
            if self._runner is None:
                with self._hooks_lock:
                    return self._finish(x, self.model(x), chunk, chunk.float(), classes, label)
            logits, features, saved = self._runner.plain(x)
            pathway_logits = self._runner.pathway(saved, features, self.spec.split(chunk))
            return Explanation(self.spec, chunk, pack_masks(chunk), chunk.float(), logits, pathway_logits,
                               self.resolve_classes(classes, logits), label, f"pathway pass on {self.backend}")

        return Explanation.assemble((chunk_of(rows, x) for rows, x in self.chunks(images)), len(images))

    def _finish(self, x: torch.Tensor, logits: torch.Tensor, masks: torch.Tensor, scores: torch.Tensor,
                target: ClassSpec, backend: str) -> Explanation:
        pathway_logits = pathway_forward(self.model, self.spec, x, masks)
        return Explanation(self.spec, masks, pack_masks(masks), scores, logits, pathway_logits,
                           self.resolve_classes(target, logits), backend, self.backend_reason)

    def pathway_gradient(self, images: torch.Tensor, explanation: Explanation) -> torch.Tensor:
        """∂z_c(x; P)/∂x through the pathway model (SPEC §7): (N, C, H, W), the saliency of any pathway."""
        if len(explanation) != len(images):
            raise InputError(f"{len(images)} images but an explanation of {len(explanation)}")
        grads = []
        for rows, x in self.chunks(images):
            with torch.enable_grad(), self._hooks_lock:
                x = x.detach().clone().requires_grad_(True)
                logits = pathway_forward(self.model, self.spec, x, explanation.masks[rows])
                chosen = logits.gather(1, explanation.classes[rows, None]).sum()
                (grad,) = torch.autograd.grad(chosen, x)
            grads.append(grad)
        return torch.cat(grads)


def saliency_map(gradient: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) input gradient → (N, H, W) saliency: max |gradient| over channels."""
    return gradient.abs().amax(1)
