"""Serving on Triton: the request checks, the per-request batch logic, model-repository configs parsed
with Triton's protobuf, and (slow) a real `pathrt serve` on free localhost ports answered by real
gRPC/HTTP requests, compared with in-process `explain` under the SPEC §8 rule, then stopped with
SIGTERM while a request is in flight."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from pathrt.errors import InputError, ServingError
from pathrt.generator import save_generator
from pathrt.opspec import parity
from pathrt.runtime import Explainer
from pathrt.serving import Batching, Client, Instances, explainer_config, free_ports, write_explainer_repository
from pathrt.serving.protocol import request_error
from pathrt.serving.repository import check_onnx_repository, declared_tensors, read_config, write_onnx_repository
from pathrt.serving.triton_model import BatchExplainer, Request
from tests.conftest import ROOT, assert_parity, varied_generator


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, embedded, trained_target_path):
    """The trained embedded target and a varied (untrained) generator for it, saved."""
    folder = tmp_path_factory.mktemp("serve")
    save_generator(varied_generator(embedded.spec, seed=3), folder / "generator", embedded.fingerprint)
    return trained_target_path, folder / "generator"


@pytest.fixture(scope="module")
def explainer(artifacts) -> Explainer:
    return Explainer.from_files(*artifacts, backend="native")


@pytest.fixture(scope="module")
def digits():
    from pathrt.data import load_digits

    return load_digits("test").images[:40]


def test_request_errors_name_the_problem():
    shape = (1, 8, 8)
    ok = np.full((2, *shape), 0.5, np.float32)
    assert request_error(ok, None, shape, 10, "raw") is None
    nan = ok.copy()
    nan[1, 0, 0, 0] = np.nan
    assert "NaN or Inf" in request_error(nan, None, shape, 10, "raw") and "image 1" in request_error(nan, None, shape,
                                                                                                     10, "raw")
    assert "empty batch" in request_error(ok[:0], None, shape, 10, "raw")
    normalized = ok.copy()
    normalized[0, 0, 0, 0] = -1.5
    assert "raw images in [0, 1]" in request_error(normalized, None, shape, 10, "raw")
    assert request_error(normalized, None, shape, 10, "preprocessed") is None
    assert "[0, 10)" in request_error(ok, np.array([[3], [10]]), shape, 10, "raw")
    assert "2 images" in request_error(ok, np.array([[3]]), shape, 10, "raw")
    assert "(N, 1, 8, 8)" in request_error(ok.reshape(2, 8, 8, 1), None, shape, 10, "raw")


def test_batch_explainer_fails_only_the_bad_requests(explainer, digits):
    """A NaN image and a class out of range in one batch fail their own requests; the good ones get
    what explaining them alone gives."""
    x = digits[:6].numpy()
    nan = x[:1].copy()
    nan[0, 0, 0, 0] = np.nan
    requests = [Request(x[:2]), Request(nan), Request(x[2:5], np.array([[1], [2], [3]])),
                Request(x[5:], np.array([[12]])), Request(x[5:], outputs=frozenset({"packed", "scores"}))]
    results = BatchExplainer(explainer, "raw").run(requests)
    assert "NaN" in results[1] and "[0, 10)" in results[3]
    alone = explainer.explain(explainer.target.preprocess(digits[:6]))
    for result, rows in ((results[0], slice(0, 2)), (results[2], slice(2, 5))):
        assert result["packed"].shape == (rows.stop - rows.start, (explainer.spec.total_channels + 7) // 8)
        assert "Y" in result and "scores" in result  # naming none: all
        np.testing.assert_array_equal(result["packed"], alone.packed[rows].numpy())
        np.testing.assert_allclose(result["logits"], alone.logits[rows].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(results[2]["classes"].ravel(), [1, 2, 3])
    np.testing.assert_allclose(results[2]["Y"].ravel(), torch.softmax(alone.logits[2:5], 1)[[0, 1, 2], [1, 2, 3]],
                               rtol=0, atol=1e-6)
    assert set(results[4]) == {"packed", "scores"}


def test_explainer_config_is_triton_protobuf(artifacts, embedded, tmp_path):
    config = explainer_config(embedded, *artifacts, Batching(16, (4, 8), 2500), Instances((("cpu", 2),)))
    model_dir = write_explainer_repository(tmp_path, config)
    parsed = read_config(model_dir / "config.pbtxt")
    assert parsed.backend == "python" and parsed.max_batch_size == 16
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 2500
    assert [(g.count, g.kind) for g in parsed.instance_group] == [(2, 2)]  # KIND_CPU = 2
    tensors = declared_tensors(parsed)
    k = embedded.spec.total_channels
    assert tensors["input"] == {"images": ("FP32", tuple(embedded.input_shape)), "target_class": ("INT64", (1,))}
    assert tensors["output"]["packed"] == ("UINT8", ((k + 7) // 8,)) and tensors["output"]["scores"] == ("FP32", (k,))
    assert [i.optional for i in parsed.input] == [False, True]
    assert json.loads(parsed.parameters["spec"].string_value) == embedded.spec.to_dict()
    assert "from pathrt.serving.triton_model import TritonPythonModel" in (model_dir / "1" / "model.py").read_text()


def test_batching_and_instances_refuse_bad_values():
    with pytest.raises(InputError, match="preferred batch sizes"):
        Batching(8, (16,))
    with pytest.raises(InputError, match="KIND=COUNT"):
        Instances.parse(["tpu=1"])
    with pytest.raises(InputError, match="KIND=COUNT"):
        Instances.parse(["cpu"])
    assert Instances.parse(["cpu=2", "GPU=1"]).groups == (("cpu", 2), ("gpu", 1))


@pytest.mark.slow
def test_export_triton_repo_matches_the_onnx_file(artifacts, tmp_path):
    """`pathrt export --triton-repo`: the config parses as Triton's ModelConfig and declares exactly the
    ONNX graph's tensors; an edited config that no longer matches is refused, naming the tensor."""
    target, generator = artifacts
    out, repo = tmp_path / "export", tmp_path / "repo"
    subprocess.run([sys.executable, "-m", "pathrt.cli", "export", "--target", str(target), "--generator",
                    str(generator), "--out", str(out), "--what", "explainer", "--no-verify", "--triton-repo", str(repo),
                    "--triton-instance", "cpu=2", "--triton-instance", "gpu=1", "--preferred-batch-sizes", "8", "32"],
                   check=True, cwd=ROOT, timeout=600, capture_output=True)
    model_dir = repo / "pathrt_onnx"
    config = check_onnx_repository(model_dir)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert [(g.kind, g.count) for g in config.instance_group] == [(2, 2), (1, 1)]  # KIND_CPU, KIND_GPU
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert {t.name for t in config.output} == {"logits", "scores", "masks", "kept", "pathway_logits", "Y", "O"}
    y = next(t for t in config.output if t.name == "Y")
    assert list(y.dims) == [1] and list(y.reshape.shape) == []  # (N,) in the model, (N, 1) on the wire
    text = (model_dir / "config.pbtxt").read_text()
    (model_dir / "config.pbtxt").write_text(text.replace('name: "scores"', 'name: "score"'))
    with pytest.raises(ServingError, match="score"):
        check_onnx_repository(model_dir)
    with pytest.raises(ServingError, match="not a readable ONNX"):
        (tmp_path / "bad.onnx").write_bytes(b"not onnx")
        write_onnx_repository(tmp_path / "repo2", tmp_path / "bad.onnx")


# ------------------------------------------------------------------------------------------------
# A real server
# ------------------------------------------------------------------------------------------------

class Served:
    """`pathrt serve` in its own process group on free ports."""

    def __init__(self, artifacts, tmp: Path) -> None:
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log = tmp / "serve.log"
        target, generator = artifacts
        cmd = [sys.executable, "-m", "pathrt.cli", "serve", "--target", str(target), "--generator", str(generator),
               "--backend", "native", "--http-port", str(self.http), "--grpc-port", str(self.grpc),
               "--metrics-port", str(self.metrics), "--max-batch-size", "16", "--preferred-batch-sizes", "8",
               "--max-queue-delay-us", "400000", "--threads", "2"]
        self.process = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                                        start_new_session=True)
        deadline = time.monotonic() + 240
        while "ready:" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"pathrt serve did not become ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        self.url = f"127.0.0.1:{self.grpc}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever the group left behind
        self.process.wait(10)


@pytest.fixture(scope="module")
def served(artifacts, tmp_path_factory):
    server = Served(artifacts, tmp_path_factory.mktemp("served"))
    yield server
    server.close()


@pytest.mark.slow
def test_served_answers_equal_in_process(served, explainer, digits):
    """Chunks of 16 sent concurrently (batched by Triton) give what in-process explain gives, with the
    prediction and with a given class per image."""
    x = explainer.target.preprocess(digits)
    with Client(served.url, in_flight=3) as client:
        assert client.max_batch_size == 16 and client.spec == explainer.spec
        got = client.explain(digits, scores=True)
        classes = torch.arange(len(digits)) % 10
        got_classes = client.explain(digits.numpy(), target=classes.numpy())
    assert got.backend == "served"
    assert_parity(explainer.explain(x), got)
    expected = explainer.explain(x, target=classes)
    assert torch.equal(got_classes.classes, classes)
    torch.testing.assert_close(got_classes.O, expected.O, rtol=0, atol=1e-5)
    assert torch.equal(got_classes.scores, got_classes.masks.float())  # not requested: the masks as 0/1


@pytest.mark.slow
def test_bad_requests_get_clear_errors(served, digits):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    good = digits[:2].numpy()
    with Client(served.url) as client:
        nan = good.copy()
        nan[0, 0, 0, 0] = np.nan
        for images, classes, match in ((nan, None, "NaN or Inf"), (good, np.array([3, 11]), r"\[0, 10\)"),
                                       (good * 5 - 2, None, r"raw images in \[0, 1\]")):
            with pytest.raises(InputError, match=match):
                client.infer(images, classes)
        raw = grpc.InferenceServerClient(served.url)
        for shape, dtype, match in (((1, 1, 7, 8), "FP32", "shape"), ((1, *good.shape[1:]), "FP64", "FP64|data-type"),
                                    ((17, *good.shape[1:]), "FP32", "batch-size must be <= 16"),
                                    ((0, *good.shape[1:]), "FP32", "byte size mismatch.*got 0")):
            tensor = grpc.InferInput("images", list(shape), dtype)
            tensor.set_data_from_numpy(np.zeros(shape, np.float64 if dtype == "FP64" else np.float32))
            with pytest.raises(InferenceServerException, match=match):
                raw.infer("pathrt", [tensor])
        raw.close()
        with pytest.raises(InputError, match="non-empty"):
            client.explain(good[:0])  # refused by the client before sending
        assert client.explain(good).masks.shape[0] == 2  # the server is unharmed


@pytest.mark.slow
def test_a_bad_request_in_a_dynamic_batch_harms_no_other(served, explainer, digits):
    """8 concurrent one-image requests form one batch of 8 (preferred size 8, 0.4 s queue delay); the
    one with a NaN image fails alone, the 7 others equal in-process explain."""
    images = digits[:8].numpy().copy()
    images[5, 0, 0, 0] = np.nan
    with Client(served.url) as client:
        before = client.batch_sizes().get(8, 0)
        results: list = [None] * 8

        def send(i: int) -> None:
            try:
                results[i] = client.infer(images[i:i + 1])
            except InputError as e:
                results[i] = e

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        deadline = time.monotonic() + 5  # Triton records a batch just after answering it
        while client.batch_sizes().get(8, 0) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.batch_sizes().get(8, 0) == before + 1, client.batch_sizes()
    assert isinstance(results[5], InputError) and "NaN" in str(results[5])
    good = [i for i in range(8) if i != 5]
    alone = explainer.explain(explainer.target.preprocess(digits[good]))
    np.testing.assert_array_equal(np.concatenate([results[i]["packed"] for i in good]), alone.packed.numpy())


@pytest.mark.slow
def test_health_metrics_and_request_cli(served, explainer, digits, tmp_path):
    with urllib.request.urlopen(f"http://127.0.0.1:{served.http}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{served.metrics}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'nv_inference_request_success{model="pathrt"' in metrics
    # plain HTTP/JSON (KServe v2), naming no outputs: all of them, per-image scalars as (N, 1)
    body = {"inputs": [{"name": "images", "shape": [2, *digits.shape[1:]], "datatype": "FP32",
                        "data": digits[:2].flatten().tolist()}]}
    request = urllib.request.Request(f"http://127.0.0.1:{served.http}/v2/models/pathrt/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        outputs = {o["name"]: o for o in json.loads(r.read())["outputs"]}
    assert set(outputs) == {"packed", "kept", "logits", "pathway_logits", "Y", "O", "classes", "scores"}
    expected = explainer.explain(explainer.target.preprocess(digits[:2]))
    assert outputs["O"]["shape"] == [2, 1]
    np.testing.assert_allclose(outputs["O"]["data"], expected.O.numpy(), rtol=0, atol=1e-5)
    assert outputs["kept"]["data"] == expected.kept.tolist()
    out = tmp_path / "request"
    done = subprocess.run([sys.executable, "-m", "pathrt.cli", "request", "--url", served.url, "--limit", "40",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from pathrt.runtime import Explanation

    expected = explainer.explain(explainer.target.preprocess(digits))
    report = parity.compare(Explanation.load(out / "explanations"), expected)
    assert report.ok, report.describe()
    assert json.loads((out / "summary.json").read_text())["images"][0] == "digits-test/0"


@pytest.mark.slow
def test_readme_client_example_runs(served, explainer):
    block = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
                 if "from pathrt.serving import Client" in b)
    namespace: dict = {}
    exec(compile(block.replace("127.0.0.1:8001", served.url), "README.md", "exec"), namespace)
    expected = explainer.explain(explainer.target.preprocess(namespace["images"]))
    assert parity.compare(namespace["explanation"], expected).ok


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight(served, digits):
    """SIGTERM while a request waits in the batcher's queue: it is answered, then the server and
    everything it started exit."""
    result: dict = {}
    with Client(served.url) as client:
        def send() -> None:
            try:
                result["out"] = client.infer(digits[:1].numpy())
            except Exception as e:  # reported below
                result["error"] = e

        thread = threading.Thread(target=send)
        thread.start()
        time.sleep(0.1)  # the request waits up to 0.4 s for a batch of 8
        served.process.send_signal(signal.SIGTERM)
        thread.join(60)
    assert "out" in result, result
    assert served.process.wait(90) == 0
    assert "stopped" in served.log.read_text()
    left = subprocess.run(["pgrep", "-g", str(served.process.pid)], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"processes left: {left.stdout}"


@pytest.mark.slow
def test_bench_serve_load_test(tmp_path):
    """`pathrt bench --serve` (short): every request answered, and the batches Triton reports hold
    exactly the images the client sent; batches larger than 1 under concurrency."""
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "-m", "pathrt.cli", "bench", "--serve", "--serve-duration", "1.5",
                           "--serve-concurrency", "1", "8", "--workdir", str(tmp_path / "no-demo"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "serve.json").read_text())["rows"]
    assert [r["concurrency"] for r in rows] == [1, 8]
    for r in rows:
        assert r["errors"] == 0 and r["requests"] > 0
        assert sum(int(b) * c for b, c in r["batches"].items()) == r["requests"]
        assert r["in_process_images_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    assert set(rows[0]["batches"]) == {"1"} and max(map(int, rows[1]["batches"])) > 1
    assert "| concurrency |" in (out / "serve.md").read_text()
