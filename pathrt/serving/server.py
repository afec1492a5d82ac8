"""`Server`: NVIDIA Triton Inference Server (the binary PyTriton ships) running the explainer.

PyTriton's `Triton` prepares and launches the bundled `tritonserver` (its Python-backend stub for
this interpreter, the backend directory, the environment), pointed at a model repository pathrt
writes (`repository.write_explainer_repository`): the Python-backend model of
`pathrt.serving.triton_model`, with Triton's dynamic batcher in front of it. We write our own
Python-backend model rather than bind a PyTriton callable because a callable that raises fails
every request of its batch; ours answers each bad request with its own error.

Every endpoint binds to 127.0.0.1 unless told otherwise. PyTriton's token protection of the
shared-memory, model-repository, trace and logging APIs stays on; the statistics API is left open
(read-only, like the metrics endpoint): clients read the batch sizes Triton formed from it.
`stop` sends Triton SIGINT: it stops taking requests, finishes those in flight (up to
`exit_timeout_s`), then exits; `pathrt serve` calls it on SIGTERM and SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pathrt.errors import ServingError
from pathrt.serving.repository import ModelConfig, write_explainer_repository

START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Endpoints:
    """Where the server listens: HTTP (KServe v2 REST, health at /v2/health/ready), gRPC, Prometheus metrics."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def _pytriton():
    try:
        from pytriton import triton
    except ImportError as e:
        raise ServingError(f"serving needs PyTriton ({e.name} is missing): pip install 'pathrt[serve]'") from e
    return triton


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free TCP ports on `host` (bound together, then released: another process could still
    take one before the server binds it; `Server.start` then fails naming the ports)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def _library_path() -> Iterator[None]:
    """The Python-backend stub links this interpreter's libpython: put its folder on LD_LIBRARY_PATH
    while the server starts (some Python builds are not found otherwise)."""
    old = os.environ.get("LD_LIBRARY_PATH")
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, old) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


class Server:
    """A Triton server with one explainer model. Use as a context manager, or `start()` / `stop()`."""

    def __init__(self, model: ModelConfig, endpoints: Endpoints = Endpoints(), exit_timeout_s: int = 30,
                 log_verbose: int = 0) -> None:
        self.model = model
        self.endpoints = endpoints
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        self._triton = None
        self._dir: tempfile.TemporaryDirectory | None = None
        self._stopped = threading.Event()

    @property
    def log_file(self) -> Path | None:
        return Path(self._dir.name) / "triton.log" if self._dir else None

    def log_tail(self, lines: int = 30) -> str:
        path = self.log_file
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Server:
        """Writes the model repository, launches Triton and waits until the model is ready."""
        triton = _pytriton()
        self._dir = tempfile.TemporaryDirectory(prefix="pathrt-serve-")
        repo = Path(self._dir.name) / "models"
        write_explainer_repository(repo, self.model)
        e = self.endpoints
        config = triton.TritonConfig(model_repository=repo, http_address=e.host, http_port=e.http_port,
                              grpc_address=e.host, grpc_port=e.grpc_port, metrics_address=e.host,
                              metrics_port=e.metrics_port, exit_timeout_secs=self.exit_timeout_s,
                              log_file=self.log_file, log_verbose=self.log_verbose, allow_gpu_metrics=False)
        self._stopped.clear()
        try:
            with _library_path():
                self._triton = triton.Triton(config=config, security_config=triton.TritonSecurityConfig(
                    restricted_endpoints=[p for p in triton.DEFAULT_PROTECTED_ENDPOINTS if p != "statistics"]))
                self._triton.run()
            self._wait_ready(timeout_s)
        except Exception as exc:
            tail = self.log_tail()
            self.stop()
            if isinstance(exc, ServingError):
                raise
            raise ServingError(f"Triton did not start the explainer ({type(exc).__name__}: {exc}); is a port of "
                               f"{e.http_port}/{e.grpc_port}/{e.metrics_port} in use? Server log:\n{tail}") from exc
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import tritonclient.http as http

        client = http.InferenceServerClient(self.endpoints.http_url, connection_timeout=5.0, network_timeout=5.0)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise ServingError(f"Triton exited while loading the explainer. Server log:\n{self.log_tail()}")
                with contextlib.suppress(Exception):
                    if client.is_model_ready(self.model.name):
                        return
                time.sleep(0.2)
        finally:
            client.close()
        raise ServingError(f"the explainer was not ready after {timeout_s:.0f} s. Server log:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def wait(self, poll_s: float = 0.5) -> None:
        """Blocks until `stop()` is called (from a signal handler or another thread) or Triton exits."""
        while not self._stopped.wait(poll_s):
            if not self.alive:
                raise ServingError(f"Triton exited unexpectedly. Server log:\n{self.log_tail()}")

    def request_stop(self) -> None:
        """Makes `wait()` return (safe from a signal handler); the caller then calls `stop()`."""
        self._stopped.set()

    def stop(self) -> None:
        """Stops taking requests, finishes those in flight, stops Triton and removes the repository."""
        self._stopped.set()
        triton, self._triton = self._triton, None
        if triton is not None:
            triton.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()


def stop_on_signals(server: Server) -> None:
    """SIGTERM and SIGINT stop `server` gracefully (call from the main thread)."""

    def handler(signum: int, _frame) -> None:
        server.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
