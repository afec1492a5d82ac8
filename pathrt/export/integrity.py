"""The content digest of an ONNX file's tensors, recorded in its metadata at export and checked at load.

`tensors_digest` is SHA-256 over every tensor the graph holds — initializers, sparse initializers
and tensor-valued node attributes (Constant values), subgraphs included — each keyed by where it
sits and hashed as `key|data_type|dims|` plus its little-endian values. The metadata props are not
part of it (they carry it), so the file can hold its own digest. A pathrt file is self-contained:
tensors stored outside it (`data_location = EXTERNAL`) are refused, since ONNX Runtime would read
them from paths the file names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from pathrt.errors import ArtifactError

DIGEST_KEY = "tensors_digest"


def _tensors(graph: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(key, TensorProto) of every tensor in `graph` and its subgraphs."""
    for t in graph.initializer:
        yield f"{prefix}init:{t.name}", t
    for sparse in graph.sparse_initializer:
        yield f"{prefix}sparse:{sparse.values.name}:values", sparse.values
        yield f"{prefix}sparse:{sparse.values.name}:indices", sparse.indices
    for i, node in enumerate(graph.node):
        where = f"{prefix}node{i}:{node.output[0] if node.output else node.name}"
        for attr in node.attribute:
            if attr.HasField("t"):
                yield f"{where}:{attr.name}", attr.t
            for j, t in enumerate(attr.tensors):
                yield f"{where}:{attr.name}:{j}", t
            if attr.HasField("g"):
                yield from _tensors(attr.g, f"{where}:{attr.name}/")
            for j, g in enumerate(attr.graphs):
                yield from _tensors(g, f"{where}:{attr.name}:{j}/")


def tensors_digest(model: Any, name: str = "<model>") -> str:
    """Hex SHA-256 of every tensor of `model` (an onnx.ModelProto); ArtifactError for external data."""
    from onnx import numpy_helper

    digest = hashlib.sha256()
    for key, t in sorted(_tensors(model.graph), key=lambda item: item[0]):
        if t.data_location == t.EXTERNAL or t.external_data:
            raise ArtifactError(f"{name} keeps tensor {t.name!r} outside the file (external data); pathrt ONNX files "
                                "are self-contained: export it again with `pathrt export`")
        digest.update(f"{key}|{t.data_type}|{tuple(t.dims)}|".encode())
        if t.HasField("raw_data"):
            digest.update(t.raw_data)
        elif t.data_type == t.STRING:
            digest.update(b"".join(len(v).to_bytes(8, "little") + v for v in t.string_data))
        else:
            try:
                digest.update(numpy_helper.to_array(t).tobytes())  # typed fields, as little-endian values
            except Exception as exc:  # onnx raises several types for malformed tensors
                raise ArtifactError(f"{name} holds a malformed tensor {t.name!r} ({exc})") from exc
    return digest.hexdigest()


def check_digest(model: Any, metadata: dict[str, str], name: str) -> None:
    """Raises ArtifactError unless the tensors of `model` have the digest its metadata recorded."""
    recorded = metadata.get(DIGEST_KEY, "")
    actual = tensors_digest(model, name)
    if actual != recorded:
        raise ArtifactError(f"{name} was modified after export: its tensors' digest is {actual[:12]}…, the file "
                            f"records {recorded[:12] or 'none'}…; export it again with `pathrt export`")
