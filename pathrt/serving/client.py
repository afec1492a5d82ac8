"""`Client`: explain images on a running `pathrt serve` (Triton, gRPC through `tritonclient`).

    with Client("127.0.0.1:8001") as client:
        explanation = client.explain(images)          # raw images in [0, 1], (N, C, H, W)
        print(explanation.masks.shape, explanation.O)

The result is an `Explanation` (the pathway spec comes from the served model's config), equal to
the in-process `Explainer.explain` under the SPEC §8 rule. Batches larger than the server's
`max_batch_size` are split and sent concurrently. A request the server refuses raises `InputError`
(bad images or classes: the server's message names the problem), anything else `ServingError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from pathrt.errors import InputError, ServingError
from pathrt.opspec.masks import unpack_masks
from pathrt.runtime.explanation import Explanation
from pathrt.serving.protocol import CLIENT_OUTPUTS, IMAGES, SCORES, TARGET_CLASS
from pathrt.serving.repository import MODEL_NAME
from pathrt.targets.spec import PathwaySpec


def _grpc():
    try:
        import tritonclient.grpc as grpc
        from tritonclient.utils import InferenceServerException
    except ImportError as e:
        raise ServingError(f"the client needs tritonclient ({e.name} is missing): pip install 'pathrt[serve]'") from e
    return grpc, InferenceServerException


class Client:
    """A gRPC client of one served explainer. `in_flight`: how many chunks of a large batch are sent at once."""

    def __init__(self, url: str = "127.0.0.1:8001", model: str = MODEL_NAME, timeout_s: float = 60.0,
                 in_flight: int = 4) -> None:
        grpc, self._error = _grpc()
        self.url, self.model, self.timeout_s, self.in_flight = url, model, timeout_s, in_flight
        self._client = grpc.InferenceServerClient(url)
        self._grpc = grpc
        try:
            if not self._client.is_model_ready(model, client_timeout=timeout_s):
                raise ServingError(f"the server at {url} has no ready model {model!r}")
            config = self._client.get_model_config(model, as_json=True, client_timeout=timeout_s)["config"]
        except self._error as e:
            self._client.close()
            raise ServingError(f"cannot reach the explainer at {url} ({e.message()}); is `pathrt serve` running "
                               "there (gRPC port)?") from e
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if "spec" not in params:
            self._client.close()
            raise ServingError(f"model {model!r} at {url} is not a pathrt explainer (no pathway spec in its config)")
        self.spec = PathwaySpec.from_dict(json.loads(params["spec"]))
        self.inputs = params.get("inputs", "raw")
        self.max_batch_size = int(config.get("max_batch_size", 1))
        self.class_names: list[str] = json.loads(params.get("class_names", "[]"))

    def infer(self, images: np.ndarray, classes: np.ndarray | None = None,
              scores: bool = False) -> dict[str, np.ndarray]:
        """One request (at most max_batch_size images): the outputs `explain` needs (`CLIENT_OUTPUTS`, plus
        the scores if asked) by name, as Triton returns them."""
        grpc = self._grpc
        inputs = [grpc.InferInput(IMAGES, list(images.shape), "FP32")]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if classes is not None:
            inputs.append(grpc.InferInput(TARGET_CLASS, [len(classes), 1], "INT64"))
            inputs[1].set_data_from_numpy(np.ascontiguousarray(classes, dtype=np.int64).reshape(-1, 1))
        names = [*CLIENT_OUTPUTS, SCORES] if scores else list(CLIENT_OUTPUTS)
        try:
            result = self._client.infer(self.model, inputs, outputs=[grpc.InferRequestedOutput(n) for n in names],
                                        client_timeout=self.timeout_s)
        except self._error as e:
            cls = InputError if "INVALID_ARG" in str(e.status()) else ServingError
            raise cls(f"the server refused the request: {e.message()}") from e
        return {n: result.as_numpy(n) for n in names}

    def explain(self, images: np.ndarray | torch.Tensor, target: int | Sequence[int] | np.ndarray | None = None,
                scores: bool = False) -> Explanation:
        """Explains `images` (N, C, H, W) float (raw in [0, 1] unless the server takes preprocessed ones);
        `target`: the class to explain, one for all or one per image (default: the prediction).
        Without `scores=True` the scores are not sent and `Explanation.scores` holds the masks as 0/1."""
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if x.ndim != 4 or x.shape[0] == 0:
            raise InputError(f"images must be a non-empty (N, C, H, W) batch, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"images are {x.dtype}; send float images (raw pixels / 255 for uint8)")
        classes = None
        if target is not None:
            classes = np.asarray(target, dtype=np.int64).reshape(-1)
            if classes.size == 1:
                classes = np.repeat(classes, len(x))
            if len(classes) != len(x):
                raise InputError(f"target names {len(classes)} classes for {len(x)} images")
        starts = range(0, len(x), self.max_batch_size)

        def send(s: int) -> dict[str, np.ndarray]:
            rows = slice(s, s + self.max_batch_size)
            return self.infer(x[rows], None if classes is None else classes[rows], scores)

        with ThreadPoolExecutor(max(1, min(self.in_flight, len(starts)))) as pool:
            parts = list(pool.map(send, starts))
        out = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        packed = torch.from_numpy(out["packed"])
        masks = unpack_masks(packed, self.spec.total_channels)
        return Explanation(self.spec, masks, packed,
                           torch.from_numpy(out[SCORES]) if scores else masks.float(),
                           torch.from_numpy(out["logits"]), torch.from_numpy(out["pathway_logits"]),
                           torch.from_numpy(out["classes"].reshape(-1)), "served",
                           f"Triton at {self.url}, model {self.model!r}")

    def batch_sizes(self) -> dict[int, int]:
        """How many times the model ran each batch size (rows), from Triton's statistics."""
        try:
            stats = self._client.get_inference_statistics(self.model, as_json=True, client_timeout=self.timeout_s)
        except self._error as e:
            raise ServingError(f"cannot read the statistics of {self.model!r} at {self.url}: {e.message()}") from e
        rows = stats["model_stats"][0].get("batch_stats", [])
        return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in rows}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
