"""The hook-free fast path: plan lowering, the native backend against the eager reference on real
torchvision architectures and the embedded model, backend selection and its recorded reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from pathrt.errors import InputError
from pathrt.generator import GeneratorConfig, PathwayGenerator
from pathrt.runtime import Explainer
from pathrt.runtime.backends import MASKS, BackendContext, select
from pathrt.runtime.explanation import Explanation
from pathrt.targets import Target, build_spec, canonized_copy, create_target
from pathrt.targets.plan import PlanError, build_plan
from tests.conftest import assert_parity, assert_python_ok, torchvision_target, varied_generator


@pytest.mark.parametrize("arch", ["alexnet", "vgg11_bn", "resnet18", "embedded"])
@pytest.mark.parametrize("strategy", [None, "dense", "union", "sparse"])  # None: chosen per conv
@torch.no_grad()
def test_native_matches_eager(arch: str, strategy: str | None, request: pytest.FixtureRequest) -> None:
    target = request.getfixturevalue("embedded") if arch == "embedded" else torchvision_target(arch)
    generator = varied_generator(target.spec)
    eager = Explainer(target, generator, backend="eager")
    native = Explainer(target, generator, backend="native")
    native.engine.runner.strategy = strategy
    shape = target.spec.input_shape
    for batch in (1, 3, 32):
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        a, b = eager.explain(x), native.explain(x)
        assert b.backend == "native" and "native kernels on cpu" in b.backend_reason
        assert 0.2 < float(a.sparsity.mean()) < 0.8
        assert_parity(a, b)
    masks = torch.rand(3, target.spec.total_channels) > 0.6
    x = torch.randn(3, *shape)
    assert_parity(eager.explain_with_masks(x, masks), native.explain_with_masks(x, masks))


@torch.no_grad()
def test_native_runs_no_hooks_and_reuses_layer_one(embedded: Target) -> None:
    generator = varied_generator(embedded.spec)
    native = Explainer(embedded, generator, backend="native")
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in native.model.modules()]
    x = torch.randn(4, *embedded.spec.input_shape)
    native.explain(x)
    assert calls == []  # the target's modules are never called: no hook can run
    native.model(x)
    assert len(calls) > 10  # ... while a plain module call would have run them
    for h in handles:
        h.remove()

    class CountConvs(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.weights: list[tuple[int, ...]] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.conv2d or func is torch.ops.pathrt.pathway_conv2d:
                self.weights.append(tuple(args[1].shape))
            return func(*args, **(kwargs or {}))

    runner = native.engine.runner
    _, features, saved = runner.plain(x)
    masks = embedded.spec.split(torch.rand(4, embedded.spec.total_channels) > 0.5)
    for strategy in ("dense", "union", "sparse"):
        runner.strategy = strategy
        with CountConvs() as mode:
            runner.pathway(saved, features, masks)
        convs = [s for s in runner.plan.steps if s.op == "conv2d"]
        # every conv after layer 1 runs once; layer 1's conv is not recomputed
        assert len(mode.weights) == len(convs) - 1
        assert tuple(runner.weights[convs[0].module][0].shape) not in mode.weights


def test_steps_flops_counts_dense_convs_and_linears() -> None:
    """PlanRunner.steps_flops (what `pathrt bench` moves to the pathway phase for the session's joint
    tail): 2 x multiply-adds of the steps from `start` on as they run, here VGG-11's three linears, the
    first with the 2x2 -> 7x7 adaptive pool folded into it (2048 inputs, not 25088), and from the last
    conv on, that conv too."""
    target = torchvision_target("vgg11_bn")
    runner = Explainer(target, varied_generator(target.spec), backend="native").engine.runner
    steps = runner.plan.steps
    first_linear = next(i for i, s in enumerate(steps) if s.op == "linear")
    linears = [m for m in target.model.modules() if isinstance(m, nn.Linear)]
    assert runner.folded_pools.keys() == {steps[first_linear].module}
    folded_inputs = 512 * 2 * 2
    assert runner.steps_flops(first_linear) == 2.0 * (linears[0].out_features * folded_inputs +
                                                      sum(m.weight.numel() for m in linears[1:]))
    last_conv = max(i for i, s in enumerate(steps) if s.op == "conv2d")
    conv = [m for m in target.model.modules() if isinstance(m, nn.Conv2d)][-1]
    h, w = runner.shapes[steps[last_conv].output][2:]
    assert runner.steps_flops(last_conv) == runner.steps_flops(first_linear) + 2.0 * conv.weight.numel() * h * w
    assert runner.steps_flops(len(steps)) == 0.0


def test_plan_of_resnet_fuses_residual_epilogues_and_limits_downsample() -> None:
    target = create_target("resnet18", 10, (3, 64, 64))
    plan = build_plan(canonized_copy(target.model), target.spec)
    pathway_steps = [plan.steps[i] for i in plan.pathway_steps]
    assert len(pathway_steps) == 8
    assert all(s.op == "conv2d" and s.attrs["relu"] and s.attrs["residual"] for s in pathway_steps)
    downsample = [s for s in plan.steps if s.module and "downsample" in s.module]
    assert len(downsample) == 3 and all(s.out_mask is not None and not s.attrs["relu"] for s in downsample)
    assert "pathway layer 8" in plan.describe()


def test_plan_refuses_unsupported_models_and_auto_falls_back() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    spec = build_spec(model, (3, 8, 8))
    with pytest.raises(PlanError, match=r"'2'.*groups"):
        build_plan(model, spec)
    prelu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.PReLU(), nn.Flatten(), nn.Linear(36 * 4, 2)).eval()
    with pytest.raises(PlanError, match="'2' \\(PReLU\\) is not supported"):
        build_plan(prelu, build_spec(prelu, (3, 8, 8)))
    target = Target(model, "custom", spec, ("a", "b", "c"), (0.0,) * 3, (1.0,) * 3)
    context = BackendContext(target, PathwayGenerator(spec, GeneratorConfig.small()))
    backend, reason = select("auto", context)
    assert backend.name == "eager" and "not session, native: conv '2'" in reason  # the plan's refusal, said once
    assert reason.count("conv '2'") == 1, reason
    with pytest.raises(InputError, match="backend 'native' cannot run here: conv '2'"):
        select("native", context)
    alexnet = create_target("alexnet", 3, (3, 64, 64))
    with pytest.raises(InputError, match="threshold"):
        select("native", BackendContext(alexnet, PathwayGenerator(alexnet.spec, GeneratorConfig.small(threshold=0.7))))


def test_backend_choice_is_recorded(embedded: Target, tmp_path: Path) -> None:
    generator = varied_generator(embedded.spec)
    auto = Explainer(embedded, generator, backend="auto")
    assert auto.backend == "session" and auto.backend_reason.startswith("auto: C++ ExplainSession on cpu")
    explanation = auto.explain(torch.randn(2, *embedded.spec.input_shape))
    assert explanation.backend == "session" and explanation.backend_reason == auto.backend_reason
    explanation.save(tmp_path / "e")
    assert Explanation.load(tmp_path / "e").backend_reason == auto.backend_reason
    assert Explainer(embedded, generator).backend == "session"  # auto is the default
    native = Explainer(embedded, generator, backend="native")
    assert native.backend_reason.startswith("requested; native kernels on cpu")
    assert Explainer(embedded, generator, backend="eager").backend_reason == "requested; module hooks on cpu"
    # without the Triton interpreter, CPU tensors must never reach a Triton launch
    with pytest.raises(InputError, match="backend 'triton' cannot run here: Triton kernels need a CUDA GPU"):
        Explainer(embedded, generator, backend="triton")


def test_auto_without_extension_falls_back_to_eager() -> None:
    code = (
        "import torch\n"
        "from pathrt.runtime import Explainer\n"
        "from pathrt.generator import PathwayGenerator, GeneratorConfig\n"
        "from pathrt.targets import create_target\n"
        "t = create_target('small_vgg', 3, (3, 32, 32))\n"
        "e = Explainer(t, PathwayGenerator(t.spec, GeneratorConfig.small()), backend='auto')\n"
        "assert e.backend == 'eager', e.backend\n"
        "assert 'native: the extension pathrt._C is not loaded' in e.backend_reason, e.backend_reason\n"
        "assert e.explain(torch.randn(2, 3, 32, 32)).backend == 'eager'\n"
    )
    assert_python_ok(code, env={"PATHRT_NO_EXTENSION": "1"})


def test_info_lists_backends() -> None:
    from pathrt.runtime.info import environment, format_environment

    env = environment()
    assert env["backends"]["cpu"]["native"] is None and env["backends"]["cpu"]["eager"] is None
    assert "Triton kernels need a CUDA GPU" in env["backends"]["cpu"]["triton"]
    json.dumps(env)
    assert "cpu   native  usable" in format_environment(env)


def test_unknown_conv_strategy_is_refused(embedded: Target) -> None:
    native = Explainer(embedded, varied_generator(embedded.spec), backend="native")
    native.engine.runner.strategy = "warp"
    with pytest.raises(ValueError, match="unknown conv strategy 'warp'"):
        native.explain(torch.randn(2, *embedded.spec.input_shape))


def test_one_lowering_and_one_canonization_per_explainer(embedded: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto on CPU prepares the session (which bundles the plan) and its native mask runner: the model is
    canonized once and lowered once for both."""
    import pathrt.runtime.backends.base as base
    import pathrt.runtime.bundle as bundle
    import pathrt.runtime.fast_path as fast_path

    calls = {"lower": 0, "canonize": 0}

    def counting(name: str, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(base, "build_plan", counting("lower", base.build_plan))
    monkeypatch.setattr(fast_path, "build_plan", counting("lower", fast_path.build_plan))
    monkeypatch.setattr(base, "canonized_copy", counting("canonize", base.canonized_copy))
    monkeypatch.setattr(bundle, "canonized_copy", counting("canonize", bundle.canonized_copy))
    explainer = Explainer(embedded, varied_generator(embedded.spec))
    assert explainer.backend == "session" and MASKS in explainer.engine.capabilities
    explainer.explain_with_masks(torch.randn(2, *embedded.spec.input_shape),
                                 torch.ones(2, embedded.spec.total_channels, dtype=torch.bool))
    assert calls == {"lower": 1, "canonize": 1}
