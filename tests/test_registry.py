"""The backend registry: names, lookup, plug-ins (module:function, entry points), supports(), bad-input errors."""

from __future__ import annotations

import importlib.metadata

import attnbench
import pytest
import torch
from attnbench import (
    AttentionInputError,
    BackendOutputError,
    UnknownBackendError,
    attend,
    get_backend,
    register_backend,
    registry,
    use_backend,
)
from attnbench.conformance.backends import backend_params
from spine_helpers import one_thread  # noqa: F401  (autouse: one torch thread)

REQUIRED = ["per_head_loop", "manual", "sdpa", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn"]


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry that the test may change; the real one is restored afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


def qkv(B=1, H=2, Tq=3, Tk=3, D=4, **kw):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, Tq, D, generator=g, **kw)
    k = torch.randn(B, H, Tk, D, generator=g, **kw)
    v = torch.randn(B, H, Tk, D, generator=g, **kw)
    return q, k, v


def test_required_backends_registered_with_descriptions():
    names = attnbench.backend_names()
    assert set(REQUIRED) <= set(names)
    for b in attnbench.all_backends():
        assert b.description and b.name in names


def test_unknown_backend_lists_known_ones():
    with pytest.raises(UnknownBackendError) as e:
        get_backend("no_such_backend")
    msg = str(e.value)
    assert "no_such_backend" in msg and all(name in msg for name in REQUIRED)
    assert not msg.startswith(("'", '"'))  # a readable sentence, not KeyError's repr
    assert isinstance(e.value, KeyError)


def test_supports_answers_with_a_reason_on_cpu():
    assert get_backend("sdpa").supports("cpu", torch.float32)
    assert get_backend("sdpa").why_unsupported("cpu", torch.float32) is None
    for name in ("sdpa_efficient", "sdpa_cudnn"):
        b = get_backend(name)
        assert not b.supports("cpu", torch.float32)
        assert "CUDA" in b.why_unsupported(torch.device("cpu"), torch.float32)


def test_register_twice_needs_replace(scratch_registry):
    fn = get_backend("manual").fn
    b = register_backend("spine_test", fn, "test double")
    assert get_backend("spine_test") is b and "spine_test" in attnbench.backend_names()
    with pytest.raises(ValueError, match="already registered"):
        register_backend("spine_test", fn, "again")
    b2 = register_backend("spine_test", fn, "replaced", replace=True)
    assert get_backend("spine_test") is b2


def test_use_backend_sets_and_restores_default(scratch_registry):
    calls = []

    def spy(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        calls.append(q.shape)
        return get_backend("manual").fn(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)

    register_backend("spy", spy, "records calls")
    q, k, v = qkv()
    with use_backend("spy"):
        attend(q, k, v)
    attend(q, k, v)  # back to the default: the spy is not called
    assert calls == [q.shape]


def test_module_function_spec_loads_a_backend():
    b = get_backend("attnbench.manual:manual_attention")
    assert b.name == "attnbench.manual:manual_attention"
    q, k, v = qkv()
    torch.testing.assert_close(b(q, k, v), get_backend("manual")(q, k, v), rtol=0, atol=0)
    with pytest.raises(UnknownBackendError, match="cannot load"):
        get_backend("attnbench.manual:does_not_exist")
    with pytest.raises(UnknownBackendError, match="cannot load"):
        get_backend("no_such_package_xyz:fn")


def test_entry_point_backends_are_registered(scratch_registry, monkeypatch):
    ep = importlib.metadata.EntryPoint(
        name="ep_plugin", value="attnbench.per_head_loop:per_head_loop_attention", group=attnbench.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group=None: [ep] if group == attnbench.ENTRY_POINT_GROUP else []
    )
    assert "ep_plugin" in attnbench.backend_names()
    b = get_backend("ep_plugin")
    assert b.description == "plug-in backend ep_plugin"  # the function has no docstring to take a line from
    q, k, v = qkv()
    torch.testing.assert_close(b(q, k, v), get_backend("per_head_loop")(q, k, v), rtol=0, atol=0)


def test_bottom_right_causal_mask():
    m = attnbench.bottom_right_causal_mask(2, 4, torch.device("cpu"))
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert torch.equal(attnbench.bottom_right_causal_mask(3, 3, "cpu"), torch.ones(3, 3, dtype=torch.bool).tril())


def test_default_scale_is_per_head_size():
    q = torch.zeros(1, 8, 2, 16)
    assert attnbench.default_scale(q, None) == pytest.approx(0.25)
    assert attnbench.default_scale(q, 0.5) == 0.5


BAD_INPUTS = {
    "rank": (lambda: (torch.zeros(2, 3, 4), *qkv()[1:]), {}, "rank 4"),
    "kv_shapes": (lambda: (*qkv()[:2], torch.zeros(1, 2, 5, 4)), {}, "k and v shapes differ"),
    "q_k_heads": (lambda: (torch.zeros(1, 3, 3, 4), *qkv()[1:]), {}, "must agree"),
    "q_k_headsize": (lambda: (torch.zeros(1, 2, 3, 8), *qkv()[1:]), {}, "must agree"),
    "tq_gt_tk": (lambda: qkv(Tq=5, Tk=3), {}, "Tq must be <= Tk"),
    "dtypes": (lambda: (qkv()[0].double(), *qkv()[1:]), {}, "dtypes differ"),
    "devices": (lambda: (qkv()[0].to("meta"), *qkv()[1:]), {}, "devices differ"),
    "integer": (lambda: tuple(t.long() for t in qkv()), {}, "floating-point"),
    "not_tensor": (lambda: ([[1.0]], *qkv()[1:]), {}, "torch.Tensor"),
    "dropout_neg": (qkv, {"dropout_p": -0.1}, r"dropout_p must be in \[0, 1\)"),
    "dropout_one": (qkv, {"dropout_p": 1.0}, r"dropout_p must be in \[0, 1\)"),
    "scale_zero": (qkv, {"scale": 0.0}, "scale must be"),
    "scale_nan": (qkv, {"scale": float("nan")}, "scale must be"),
    "causal_str": (qkv, {"causal": "no"}, "causal must be True or False, got 'no'"),
    "causal_int": (qkv, {"causal": 0}, "causal must be True or False, got 0"),
    "no_heads": (lambda: qkv(H=0), {}, "no heads"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
@pytest.mark.parametrize("backend", backend_params())
def test_bad_input_gets_a_clear_error(backend, case):
    make, kwargs, message = BAD_INPUTS[case]
    with pytest.raises(AttentionInputError, match=message):
        backend(*make(), **kwargs)
    assert issubclass(AttentionInputError, ValueError)


@pytest.mark.parametrize(
    "bad_output,problem",
    [
        (lambda out: out[:, :, :-1], r"shape \(1, 2, 2, 4\)"),
        (lambda out: out.double(), "torch.float64"),
        (lambda out: out.to("meta"), "on meta"),
        (lambda out: out.tolist(), "list, not a torch.Tensor"),
    ],
    ids=["shape", "dtype", "device", "not_tensor"],
)
def test_a_backend_output_that_breaks_the_contract_is_refused(scratch_registry, bad_output, problem):
    def broken(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        return bad_output(get_backend("manual").fn(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale))

    register_backend("broken", broken, "returns something else than the contract says")
    with pytest.raises(BackendOutputError, match=rf"backend 'broken' returned (.* )?{problem}"):
        attend(*qkv(), backend="broken")


def test_a_backend_that_cannot_run_here_says_why():
    backend = get_backend("sdpa_cudnn")
    reason = backend.why_unsupported("cpu", torch.float32)
    assert reason
    with pytest.raises(AttentionInputError, match=f"sdpa_cudnn cannot run on cpu/torch.float32: {reason}"):
        attend(*qkv(), backend="sdpa_cudnn")


@pytest.mark.parametrize("spec", ["attnbench.manual:", ":manual_attention", "a:b:c", "attnbench manual:fn", "x.:f"])
def test_a_malformed_spec_is_named(spec):
    with pytest.raises(UnknownBackendError, match="malformed backend spec"):
        get_backend(spec)


def test_a_spec_that_fails_on_import_or_is_not_callable_is_an_unknown_backend(tmp_path, monkeypatch):
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownBackendError, match="RuntimeError: no GPU here"):
        get_backend("explodes_on_import:fn")
    with pytest.raises(UnknownBackendError, match="must be a attnbench.Backend or an attention callable"):
        get_backend("math:pi")


@pytest.mark.parametrize("name", ["manual", "per_head_loop", "compiled_manual"])
def test_a_score_matrix_too_big_for_memory_is_refused_up_front(name):
    """Tq = Tk = 200,000: 160 GB of float32 scores per copy; the inputs themselves are 3 x 800 kB."""
    q = torch.zeros(1, 1, 200_000, 1)
    with pytest.raises(AttentionInputError, match=rf"{name} would need about [\d.]+ GB .* available on cpu"):
        attend(q, q, q, backend=name)


def test_the_memory_check_counts_what_each_backend_materializes():
    q, k = torch.zeros(2, 4, 8, 16), torch.zeros(2, 4, 32, 16)
    assert get_backend("manual").working_set(q, k) == 2 * 2 * 4 * 8 * 32 * 4  # scores and weights, float32
    assert get_backend("per_head_loop").working_set(q, k) == 2 * 2 * 1 * 8 * 32 * 4  # one head at a time
    assert get_backend("sdpa").working_set is None and get_backend("chunked").working_set is None
