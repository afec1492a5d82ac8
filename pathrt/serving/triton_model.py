"""The explainer as a Triton Python-backend model: one `explain` per dynamic batch, errors per request.

Triton's dynamic batcher hands `execute` the requests it grouped. Each request is checked on its own
(`protocol.request_error`); the good ones are explained together in one call of the explainer, and
each bad one gets its own error response, so a NaN image or a class out of range fails only the
request that sent it. The repository's `model.py` imports `TritonPythonModel` from here
(`pathrt.serving.repository`); `BatchExplainer` holds everything but Triton's types, so it is used
and tested in-process too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pathrt.serving.protocol import IMAGES, SCORES, TARGET_CLASS, InputKind, check_input_kind, request_error


@dataclass
class Request:
    """One request's inputs as numpy arrays; `outputs`: the names it asked for (None: all)."""

    images: np.ndarray
    classes: np.ndarray | None = None
    outputs: frozenset[str] | None = None


class BatchExplainer:
    """Explains the good requests of a batch in one call; returns outputs or an error message per request."""

    def __init__(self, explainer, inputs: InputKind = "raw") -> None:
        self.explainer = explainer
        self.inputs = check_input_kind(inputs)
        self.target = explainer.target

    def error(self, request: Request) -> str | None:
        return request_error(request.images, request.classes, self.target.input_shape, self.target.num_classes,
                             self.inputs)

    def run(self, requests: Sequence[Request]) -> list[dict[str, np.ndarray] | str]:
        import torch

        from pathrt.errors import PathrtError

        results: list[dict[str, np.ndarray] | str] = [self.error(r) or {} for r in requests]
        good = [i for i, r in enumerate(results) if not isinstance(r, str)]
        if not good:
            return results
        x = torch.from_numpy(np.concatenate([requests[i].images for i in good]).astype(np.float32, copy=False))
        if self.inputs == "raw":
            x = self.target.preprocess(x)
        try:
            explanation = self.explainer.explain(x)
        except PathrtError as e:  # e.g. a check of the explainer the protocol does not repeat
            for i in good:
                results[i] = str(e)
            return results
        start = 0
        for i in good:
            request = requests[i]
            rows = slice(start, start + len(request.images))
            start = rows.stop
            part = explanation.subset(rows)
            if request.classes is not None:
                part = replace(part, classes=torch.from_numpy(request.classes.reshape(-1).astype(np.int64)))
            results[i] = outputs_of(part, request.outputs)
        return results


_OUTPUTS = {"packed": lambda e: e.packed, "kept": lambda e: e.kept[:, None], "logits": lambda e: e.logits.float(),
            "pathway_logits": lambda e: e.pathway_logits.float(), "Y": lambda e: e.Y[:, None],
            "O": lambda e: e.O[:, None], "classes": lambda e: e.classes[:, None], SCORES: lambda e: e.scores.float()}


def outputs_of(explanation, wanted: frozenset[str] | None) -> dict[str, np.ndarray]:
    """The outputs a request asked for (Triton names all of them for a request that names none), per-image
    scalars as (N, 1); only those are computed and sent."""
    names = [n for n in _OUTPUTS if wanted is None or n in wanted]
    return {name: _OUTPUTS[name](explanation).contiguous().numpy() for name in names}


class TritonPythonModel:
    """The Triton Python-backend entry points (`initialize`, `execute`, `finalize`)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        for path in json.loads(params.get("sys_path", "[]")):  # the serving process's packages
            if path not in sys.path:
                sys.path.append(path)
        import torch

        from pathrt.runtime import Explainer

        threads = int(params.get("num_threads", "0"))
        if threads:
            torch.set_num_threads(threads)
        explainer = Explainer.from_files(params["target"], params["generator"], backend=params.get("backend", "auto"),
                                         max_batch_size=max(1, int(config["max_batch_size"])), num_threads=threads)
        self.batch = BatchExplainer(explainer, check_input_kind(params.get("inputs", "raw")))
        shape = (1, *explainer.target.input_shape)
        self.batch.run([Request(np.full(shape, 0.5, np.float32))])  # warm-up: the first call prepares kernels

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        parsed = []
        for r in requests:
            classes = pb_utils.get_input_tensor_by_name(r, TARGET_CLASS)
            wanted = frozenset(r.requested_output_names()) or None
            parsed.append(Request(pb_utils.get_input_tensor_by_name(r, IMAGES).as_numpy(),
                                  None if classes is None else classes.as_numpy(), wanted))
        responses = []
        for result in self.batch.run(parsed):
            if isinstance(result, str):
                error = pb_utils.TritonError(result, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, value) for name, value in result.items()]))
        return responses

    def finalize(self) -> None:
        self.batch = None
