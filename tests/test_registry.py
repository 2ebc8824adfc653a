"""The backend registry: names, lookup, plug-ins (module:function, entry points), supports(), bad-input errors."""

from __future__ import annotations

import importlib.metadata

import attnbench
import pytest
import torch
from attnbench import (
    AttentionInputError,
    Backend,
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
    "kv_shapes": (lambda: (*qkv()[:2], torch.zeros(1, 2, 5, 4)), {}, r"k and v must agree on \(B, Hkv, Tk\)"),
    "q_k_heads": (lambda: (torch.zeros(1, 3, 3, 4), *qkv()[1:]), {}, "must be a multiple of the key/value heads"),
    "q_k_batch": (lambda: (torch.zeros(2, 2, 3, 4), *qkv()[1:]), {}, "must agree"),
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
    "window_zero": (qkv, {"window": 0}, "window must be an int >= 1"),
    "window_float": (qkv, {"window": 2.0}, "window must be an int >= 1"),
    "window_bool": (qkv, {"window": True}, "window must be an int >= 1"),
    "window_not_causal": (qkv, {"window": 2, "causal": False}, "window needs causal=True"),
    "mask_mod_not_callable": (qkv, {"mask_mod": True}, "mask_mod must be callable"),
    "docs_shape": (qkv, {"document_ids": torch.zeros(1, 4, dtype=torch.long)}, r"shape \(B, Tk\) = \(1, 3\)"),
    "docs_float": (qkv, {"document_ids": torch.zeros(1, 3)}, "integer tensor"),
    "docs_bool": (qkv, {"document_ids": torch.zeros(1, 3, dtype=torch.bool)}, "integer tensor"),
    "docs_list": (qkv, {"document_ids": [[0, 0, 1]]}, "document_ids must be a torch.Tensor"),
    "softcap_zero": (qkv, {"softcap": 0.0}, "softcap must be"),
    "softcap_neg": (qkv, {"softcap": -1.0}, "softcap must be"),
    "softcap_inf": (qkv, {"softcap": float("inf")}, "softcap must be"),
    "softcap_str": (qkv, {"softcap": "30"}, "softcap must be"),
    "softcap_past_dtype": (lambda: tuple(t.half() for t in qkv()), {"softcap": 1e5}, "softcap 100000.0 exceeds"),
    "scale_bool": (qkv, {"scale": True}, "scale must be a positive finite number or None, got True"),
    "scale_str": (qkv, {"scale": "0.5"}, "scale must be"),
    "scale_complex": (qkv, {"scale": 0.5j}, "scale must be"),
    "scale_inf": (qkv, {"scale": float("inf")}, "scale must be"),
    "scale_neg": (qkv, {"scale": -0.5}, "scale must be"),
    "mask_mod_none": (qkv, {"mask_mod": lambda b, h, q, kv: None}, "mask_mod must return a bool tensor, got None"),
    "mask_mod_shape": (qkv, {"mask_mod": lambda b, h, q, kv: torch.ones(3, 5, dtype=torch.bool)}, "mask_mod returned"),
    "mask_mod_float": (qkv, {"mask_mod": lambda b, h, q, kv: (q >= kv).float()}, "bool tensor, got torch.float32"),
    "causal_str": (qkv, {"causal": "no"}, "causal must be True or False, got 'no'"),
    "causal_int": (qkv, {"causal": 0}, "causal must be True or False, got 0"),
    "no_heads": (lambda: qkv(H=0), {}, "no heads"),
    "sinks_shape": (qkv, {"sinks": torch.zeros(3)}, r"sinks must have shape \(2,\)"),
    "sinks_int": (qkv, {"sinks": torch.zeros(2, dtype=torch.long)}, "sinks must be a floating-point tensor"),
    "sinks_list": (qkv, {"sinks": [0.0, 0.0]}, "sinks must be a torch.Tensor"),
    "alibi_shape": (qkv, {"alibi_slopes": torch.zeros(2, 3)}, r"alibi_slopes must have shape \(2,\) or \(1, 2\)"),
    "score_mod_not_callable": (qkv, {"score_mod": 1.0}, "score_mod must be callable"),
    "return_lse_str": (qkv, {"return_lse": "yes"}, "return_lse must be True or False, got 'yes'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
@pytest.mark.parametrize("backend", backend_params())
def test_bad_input_gets_a_clear_error(backend, case):
    make, kwargs, message = BAD_INPUTS[case]
    with pytest.raises(AttentionInputError, match=message):
        backend(*make(), **kwargs)
    assert issubclass(AttentionInputError, ValueError)


def _old_style(calls):
    def fn(q, k, v, *, causal=True, dropout_p=0.0, scale=None):  # a dense-MHA plug-in, written before features
        calls.append("called")
        return get_backend("manual").fn(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)

    return fn


def test_undeclared_features_are_refused_with_the_reason():
    calls = []
    plain = attnbench.Backend("plain", _old_style(calls), "declares nothing")
    q, k, v = qkv(H=4)
    torch.testing.assert_close(plain(q, k, v), get_backend("manual")(q, k, v), rtol=0, atol=0)  # still works
    k2, v2 = k[:, :2], v[:, :2]  # (B, 2, Tk, D): GQA with 2 query heads per key/value head
    docs = torch.zeros(1, 3, dtype=torch.long)
    q8, one = q.to(torch.float8_e4m3fn), torch.tensor(1.0)
    refused = {
        "gqa": ((q, k2, v2), {}),
        "window": ((q, k, v), {"window": 2}),
        "mask_mod": ((q, k, v), {"mask_mod": lambda b, h, qi, ki: ki <= qi}),
        "document_ids": ((q, k, v), {"document_ids": docs}),
        "softcap": ((q, k, v), {"softcap": 30.0}),
        "value_dim": ((q, k, torch.zeros(*v.shape[:-1], 8)), {}),
        "score_mod": ((q, k, v), {"score_mod": lambda s, b, h, qi, ki: s}),
        "alibi": ((q, k, v), {"alibi_slopes": torch.ones(4)}),
        "sinks": ((q, k, v), {"sinks": torch.zeros(4)}),
        "return_lse": ((q, k, v), {"return_lse": True}),
        "fp8": ((q8, q8, q8), {"descale": (one, one, one)}),
    }
    assert set(refused) == set(attnbench.FEATURES)
    for feature, (args, kwargs) in refused.items():
        assert plain.why_no_feature(feature, "cpu") == f"plain does not implement {feature}"
        with pytest.raises(AttentionInputError, match=f"plain cannot run {feature} on cpu: plain does not implement"):
            plain(*args, **kwargs)
    assert calls == ["called"]  # refused before the backend ran


def test_backend_fn_gets_only_the_feature_keywords_in_use(scratch_registry):
    seen = []

    def fn(q, k, v, **kwargs):
        seen.append(sorted(kwargs))
        return get_backend("manual").fn(q, k, v, **kwargs)

    register_backend("kw_spy", fn, "records keywords", features={"window", "softcap", "gqa"})
    q, k, v = qkv(H=2)
    attend(q, k, v, backend="kw_spy")
    attend(q, k[:, :1], v[:, :1], window=2, backend="kw_spy")
    attend(q, k, v, softcap=5.0, causal=False, backend="kw_spy")
    assert seen == [
        ["causal", "dropout_p", "scale"],
        ["causal", "dropout_p", "scale", "window"],
        ["causal", "dropout_p", "scale", "softcap"],
    ]


def test_a_declared_feature_can_be_refused_per_device():
    def cuda_only(feature, device):
        return "the kernel takes a mask on CUDA only" if feature == "mask_mod" and device.type == "cpu" else None

    b = attnbench.Backend("masky", _old_style([]), "d", features=frozenset({"mask_mod"}), no_feature_reason=cuda_only)
    assert b.why_no_feature("mask_mod", "cpu") == "the kernel takes a mask on CUDA only"
    assert b.why_no_feature("mask_mod", "cuda") is None
    q, k, v = qkv()
    with pytest.raises(AttentionInputError, match="on CUDA only"):
        b(q, k, v, mask_mod=lambda b_, h, qi, ki: ki <= qi)
    with pytest.raises(ValueError, match="unknown feature"):
        b.why_no_feature("int4", "cpu")


def test_unknown_declared_feature_is_rejected(scratch_registry):
    with pytest.raises(ValueError, match="unknown features"):
        register_backend("typo", get_backend("manual").fn, "d", features={"sliding_window"})


def test_features_in_use():
    q, k, v = qkv(H=4)
    assert attnbench.AttentionCall().features(q, k) == []
    assert attnbench.AttentionCall(window=3, softcap=1.0).features(q, k[:, :1]) == ["gqa", "window", "softcap"]


def test_a_keyword_the_contract_lacks_is_named_with_the_ones_it_has():
    # Pass: a misspelt keyword is a TypeError listing the contract's keywords, never silently dropped.
    with pytest.raises(
        TypeError, match=r"unknown attention keyword\(s\) \['windw'\].*causal, dropout_p, scale, window"
    ):
        attend(*qkv(), backend="manual", windw=3)


def test_a_backend_function_gets_only_the_keywords_in_use():
    # Pass: causal, dropout_p and scale always; a feature keyword only when given (an old-style plug-in takes no more).
    call = attnbench.AttentionCall(window=4, return_lse=False, sinks=None)
    assert call.keywords() == {"causal": True, "dropout_p": 0.0, "scale": None, "window": 4}
    assert attnbench.AttentionCall(return_lse=True).keywords()["return_lse"] is True


@pytest.mark.parametrize("name", ["manual", "per_head_loop"])
def test_a_query_that_sees_no_key_outputs_zeros_with_zero_gradients(name):
    """The contract's definition of an empty row: output 0, and no gradient flows through it (not NaN)."""
    q, k, v = (t.requires_grad_(True) for t in qkv(H=2, Tq=4, Tk=4, dtype=torch.float64))

    def hide_from_odd_queries(b, h, q_idx, kv_idx):
        return (q_idx % 2 == 0) & (kv_idx <= q_idx)  # queries 1 and 3 see nothing

    out = attend(q, k, v, mask_mod=hide_from_odd_queries, backend=name)  # (1, 2, 4, 4)
    assert torch.equal(out[..., 1::2, :], torch.zeros_like(out[..., 1::2, :]))
    causal = attend(q, k, v, backend=name)  # the even queries see exactly their causal keys
    torch.testing.assert_close(out[..., ::2, :], causal[..., ::2, :], rtol=0, atol=1e-12)
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
    assert torch.equal(dq[..., 1::2, :], torch.zeros_like(dq[..., 1::2, :]))
    for g in (dk, dv):
        assert torch.equal(g[..., 3, :], torch.zeros_like(g[..., 3, :]))  # key 3 is seen by no query


def test_visible_mask_combines_every_mask():
    q, k, v = qkv(B=2, H=1, Tq=3, Tk=5)
    docs = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 2]])
    vis = attnbench.visible_mask(q, k, causal=True, window=2, document_ids=docs, mask_mod=lambda b, h, qi, ki: ki != 3)
    assert vis.shape == (2, 1, 3, 5)
    assert vis[0, 0].int().tolist() == [[0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]]
    assert vis[1, 0].int().tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]]
    assert attnbench.visible_mask(q, k, causal=False) is None


def test_sdpa_kernels_say_which_feature_they_refuse_where():
    flash, efficient = get_backend("sdpa_flash"), get_backend("sdpa_efficient")
    for feature in ("window", "mask_mod", "document_ids"):
        assert flash.why_no_feature(feature, "cpu") is None
        assert "no attn_mask" in flash.why_no_feature(feature, "cuda")
        assert efficient.why_no_feature(feature, "cuda") is None
    assert flash.why_no_feature("gqa", "cuda") is None
    assert "enable_gqa" in efficient.why_no_feature("gqa", "cuda")
    assert get_backend("sdpa").why_no_feature("softcap", "cpu") == "sdpa does not implement softcap"


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


@pytest.mark.parametrize(
    "bad_lse,problem",
    [
        (lambda out, lse: out, r"returned no \(out, lse\)"),
        (lambda out, lse: (out, lse.transpose(1, 2)), r"lse of shape \(1, 3, 2\)"),
        (lambda out, lse: (out, lse.double()), "lse of shape .* torch.float64"),
    ],
    ids=["no_tuple", "bthd_layout", "dtype"],
)
def test_a_returned_lse_that_breaks_the_contract_is_refused(scratch_registry, bad_lse, problem):
    def broken(q, k, v, **kwargs):
        return bad_lse(*get_backend("manual").fn(q, k, v, **kwargs))

    register_backend("broken_lse", broken, "returns another lse than the contract says", features={"return_lse"})
    with pytest.raises(BackendOutputError, match=rf"backend 'broken_lse' (returned|was asked) .*{problem}"):
        attend(*qkv(), return_lse=True, backend="broken_lse")


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


@pytest.mark.parametrize("name", ["manual", "per_head_loop", "compiled_manual", "sdpa_math"])
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


def test_why_not_is_the_one_refusal_question_and_old_hooks_answer_it():
    # A plug-in written with the four separate hooks (dtype, dropout, backward, feature) is asked one question.
    old_style = Backend(
        "old_style",
        lambda q, k, v, **kw: q,
        "declares its refusals by hook",
        unsupported_reason=lambda device, dtype: "fp64 only" if dtype != torch.float64 else None,
        no_dropout_reason=lambda device: "no dropout",
        features={"window"},
        no_feature_reason=lambda feature, device: "no window on cpu" if device.type == "cpu" else None,
        no_backward_reason="forward only",
    )
    assert old_style.why_not("cpu", torch.float64) is None
    assert old_style.why_not("cpu", torch.float32) == "cannot run on cpu/torch.float32: fp64 only"
    assert old_style.why_not("cpu", torch.float64, dropout=True) == "cannot apply dropout here: no dropout"
    assert old_style.why_not("cpu", torch.float64, backward=True).startswith("is forward-only on cpu (forward only)")
    assert old_style.why_not("cpu", torch.float64, features=["window"]) == "cannot run window on cpu: no window on cpu"
    assert old_style.why_not("cpu", torch.float64, features=["gqa"]).endswith("old_style does not implement gqa")


def test_fp8_inputs_need_their_descales_and_come_back_in_bfloat16():
    q, k, v = (torch.randn(1, 2, 4, 8).to(torch.float8_e4m3fn) for _ in range(3))
    one = torch.tensor(1.0)
    with pytest.raises(AttentionInputError, match="fp8 inputs need descale"):  # fp8 values without their scales
        attend(q, k, v, backend="manual")
    with pytest.raises(AttentionInputError, match="descale is only for fp8"):  # would be silently ignored
        attend(q.float(), k.float(), v.float(), backend="manual", descale=(one, one, one))
    with pytest.raises(AttentionInputError, match=r"k_descale must be a float32 tensor of shape \(\) or \(B, Hkv\)"):
        attend(q, k, v, backend="manual", descale=(one, torch.ones(3), one))
    with pytest.raises(AttentionInputError, match="sdpa cannot run fp8 on cpu"):
        attend(q, k, v, backend="sdpa", descale=(one, one, one))
    assert attend(q, k, v, backend="manual", descale=(one, one, one)).dtype == torch.bfloat16
