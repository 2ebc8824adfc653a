"""`hf_sdpa`, `hf_eager`, `hf_flex`: Hugging Face transformers' own attention functions, the code its models call,
judged as backends (install with `pip install 'attnbench[transformers]'`).

transformers' attention-function interface (`transformers.integrations.sdpa_attention.sdpa_attention_forward`,
`transformers.models.llama.modeling_llama.eager_attention_forward`):

    out, weights = fn(module, query, key, value, attention_mask, scaling=..., dropout=..., is_causal=...)
    # query (B, Hq, Tq, D), key/value (B, Hkv, Tk, D): the contract's layout; out (B, Tq, Hq, D)

- GQA: through `module.num_key_value_groups` (query head h reads kv head h // groups: the contract's mapping).
- The mask: a model builds it with transformers' masking utilities (bool for sdpa, additive float for eager, -inf
  replaced by the dtype's minimum); here the adapter builds the same kinds from the contract's visible mask
  (bottom-right causal, window, documents, mask_mod), so every mask feature reaches the function as a model's
  mask does. sdpa with plain causal prefill (Tq == Tk) gets no mask and `is_causal`, as the models pass it.
- eager: the softmax runs in float32 whatever the input (`softmax(..., dtype=torch.float32)`), and a row that sees
  no key gets uniform weights over its masked keys (the dtype's minimum is finite): mean(v), not the contract's 0.
- Dropout: applied by both when the module is in training mode; the adapter passes `training` from dropout_p > 0.
- flex (`transformers.integrations.flex_attention.flex_attention_forward`): given the BlockMask a model builds (here
  the contract's mask as flex's mask_mod on absolute positions, flex.block_mask), softcap and sinks (`s_aux`)
  natively. On CPU (torch 2.13.0) forward only, fp32/fp16/bf16: FlexAttention has no CPU backward, Inductor raises
  on float64, transformers refuses sinks there (it asks for no LSE on CPU); a NaN query row comes out 0. Each new
  shape compiles (6-27 s on 2 busy cores) until dynamo's recompile limit, then eager flex runs: `attnbench check
  hf_flex --quick` took 4 min 20 s, the default profile 20 min (PASS: 37 properties, the NaN departure declared).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

from .contract import NAN_IN_FUTURE_KEY_OR_VALUE, EmptyRowDeparture, NanDeparture
from .dense import default_scale, visible_mask
from .flex import CUDA_DTYPES, block_mask
from .foreign import missing_package_reason
from .registry import register_backend
from .sdpa import SDPA_CPU_NAN
from .visibility import Visibility

INSTALL = "pip install 'attnbench[transformers]'"
MASK_FEATURES = {"gqa", "window", "mask_mod", "document_ids"}
# eager's softmax runs in float32 whatever the input, where the float64 minimum it masks with becomes -inf: a float64
# row that sees no key is NaN, and its NaN reaches every key's gradient. Refused, not judged as what it is not.
EAGER_FLOAT64 = (
    "transformers' eager_attention_forward computes float64 in float32 (softmax(..., dtype=float32)), where the "
    "float64 minimum it masks with is -inf: a row that sees no key is NaN and so is every key's gradient"
)


class _Module(torch.nn.Module):
    """What transformers' attention functions read from the attention layer that calls them."""

    def __init__(self, groups: int, causal: bool, training: bool):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, causal
        self.train(training)


@functools.cache
def import_transformers():
    """transformers, imported with this checkout's root off sys.path: its `kernels/` folder (installed as
    `attnbench`) would otherwise shadow Hugging Face's `kernels` package, which transformers looks up (the root is
    on sys.path under `python -m` from it, and in pytest's rootdir). Importing hub_kernels here settles that
    look-up (transformers caches it) before any lazily imported model module asks again."""
    root = Path(__file__).resolve().parents[1]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    try:
        import transformers
        import transformers.integrations.hub_kernels  # noqa: F401
    finally:
        sys.path[:] = saved
    return transformers


@functools.cache
def _functions():
    import_transformers()
    from transformers.integrations.flex_attention import flex_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return {"sdpa": sdpa_attention_forward, "eager": eager_attention_forward, "flex": flex_attention_forward}


def _call(kind: str, q, k, v, *, causal=True, dropout_p=0.0, scale=None, **masks):
    """q: (B, Hq, Tq, D), k, v: (B, Hkv, Tk, D) -> (B, Hq, Tq, D) through transformers' `kind` attention function;
    masks: the contract's window, mask_mod and document_ids keywords."""
    module = _Module(q.size(1) // k.size(1), causal, training=dropout_p > 0)
    vis = visible_mask(q, k, causal=causal, **masks)  # (B or 1, Hq or 1, Tq, Tk); None: every key visible
    plain_causal = causal and all(m is None for m in masks.values())
    if kind == "sdpa" and plain_causal and q.size(2) == k.size(2):
        mask = None  # what a model passes sdpa for plain causal prefill: is_causal, no mask (eager always gets one)
    elif vis is None:
        mask, module.is_causal = None, False
    elif kind == "sdpa":
        mask = vis.expand(q.size(0), 1 if vis.size(1) == 1 else q.size(1), q.size(2), k.size(2))  # bool, True: see
    else:
        mask = torch.zeros(vis.shape, dtype=q.dtype, device=q.device).masked_fill(~vis, torch.finfo(q.dtype).min)
    if mask is not None:
        module.is_causal = False
    out, _ = _functions()[kind](
        module, q, k, v, mask, scaling=default_scale(q, scale), dropout=dropout_p, is_causal=module.is_causal
    )
    return out.transpose(1, 2)  # (B, Tq, Hq, D) -> (B, Hq, Tq, D)


def _flex(q, k, v, *, causal=True, dropout_p=0.0, scale=None, softcap=None, sinks=None, **masks):
    """q: (B, Hq, Tq, D), k, v: (B, Hkv, Tk, D) -> (B, Hq, Tq, D) through transformers' flex_attention_forward;
    masks: the contract's window, mask_mod and document_ids keywords."""
    module = _Module(q.size(1) // k.size(1), causal, training=False)
    mask = block_mask(q, k, Visibility(causal, **masks))
    scaling = default_scale(q, scale)
    out, _ = _functions()["flex"](module, q, k, v, mask, scaling=scaling, softcap=softcap, s_aux=sinks)
    return out.transpose(1, 2)  # (B, Tq, Hq, D) -> (B, Hq, Tq, D)


def _flex_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if reason := _reason(device, dtype):
        return reason
    return None if dtype in CUDA_DTYPES else f"FlexAttention takes fp16/bf16/fp32, not {dtype} (Inductor raises)"


def _flex_no_backward(device: torch.device) -> str | None:
    return f"FlexAttention has no backward on CPU (torch {torch.__version__})" if device.type == "cpu" else None


def _flex_no_feature(feature: str, device: torch.device) -> str | None:
    if feature == "sinks" and device.type == "cpu":
        return "transformers refuses sinks with flex on CPU (it asks FlexAttention for no LSE there)"
    return None


def _reason(device: torch.device, dtype: torch.dtype) -> str | None:
    return missing_package_reason("transformers", INSTALL)


def _eager_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    return _reason(device, dtype) or (EAGER_FLOAT64 if dtype == torch.float64 else None)


register_backend(
    "hf_sdpa",
    functools.partial(_call, "sdpa"),
    "transformers' sdpa_attention_forward (the attention of its models' attn_implementation='sdpa')",
    _reason,
    features=MASK_FEATURES,
    nan_departure=SDPA_CPU_NAN.said_of("transformers' sdpa_attention_forward (PyTorch's SDPA underneath)"),
)
register_backend(
    "hf_eager",
    functools.partial(_call, "eager"),
    "transformers' Llama eager_attention_forward (matmul, additive mask, float32 softmax)",
    _eager_reason,
    features=MASK_FEATURES,
    nan_departure=NAN_IN_FUTURE_KEY_OR_VALUE.said_of("transformers' eager_attention_forward"),
    empty_row_departure=EmptyRowDeparture(
        "transformers' eager_attention_forward masks with the dtype's minimum, a finite number: a row that sees no "
        "key weighs every key alike and comes out as mean(v), not 0",
        outputs={"mean_v"},
    ),
)
register_backend(
    "hf_flex",
    _flex,
    "transformers' flex_attention_forward (compiled FlexAttention with the model's BlockMask, softcap, sinks)",
    _flex_reason,
    no_dropout_reason=lambda device: "FlexAttention has no dropout",
    features=MASK_FEATURES | {"softcap", "sinks"},
    no_feature_reason=_flex_no_feature,
    no_backward_reason=_flex_no_backward,
    nan_departure=NanDeparture(
        "transformers' flex_attention_forward on CPU (compiled FlexAttention): a NaN in a future value reaches every "
        "earlier row (0 * NaN in weights @ values), and a row whose query is NaN comes out finite (attnbench probe)",
        spreads={"value"},
        hides={"q"},
    ),
)
