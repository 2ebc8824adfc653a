"""Attention weights of a trained GPT, read out through each backend's own contract (no backend changes).

Trick: pad q and k with zeros to width W = max(D, Tk) (dot products unchanged), pass v = the Tk x Tk
identity (zero-padded to W columns) and scale = 1/sqrt(D): the output's first Tk columns are exactly the
attention matrix P = softmax(q k^T / sqrt(D) + causal mask).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from attnbench import get_backend


def attention_matrix(backend: str, q: torch.Tensor, k: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """P (B, H, Tq, Tk) as computed by `backend` for q (B, H, Tq, D), k (B, H, Tk, D)."""
    B, H, Tk, D = k.shape
    W = max(D, Tk)
    qp = F.pad(q, (0, W - D))  # (B, H, Tq, W)
    kp = F.pad(k, (0, W - D))  # (B, H, Tk, W)
    eye = torch.eye(Tk, W, dtype=q.dtype, device=q.device)  # (Tk, W)
    v = eye.expand(B, H, Tk, W).contiguous()  # (B, H, Tk, W)
    out = get_backend(backend)(qp, kp, v, causal=causal, scale=1.0 / math.sqrt(D))  # (B, H, Tq, W)
    return out[..., :Tk]  # (B, H, Tq, Tk)


@torch.no_grad()
def model_attention(model, idx: torch.Tensor, backend: str, layer: int = -1) -> torch.Tensor:
    """Attention weights (H, T, T) of `layer` for the prompt idx (1, T), the whole model run on `backend`."""
    model.set_backend(backend)
    attn = model.blocks[layer].attn
    captured = {}
    real = attn.backend

    def capture(q, k, v, **kw):  # same contract; records the projected q, k of this layer
        captured["q"], captured["k"] = q, k
        return real(q, k, v, **kw)

    attn.backend = capture
    try:
        model.eval()
        model(idx)
    finally:
        attn.backend = real
    return attention_matrix(backend, captured["q"], captured["k"])[0]  # (H, T, T)


def train_small_model(data_path: str | None, steps: int, device: str, log=print):
    """A small char GPT trained for `steps` steps (seconds on a CPU); returns (model, tokenizer, final val loss)."""
    from attnbench.gpt.data import Dataset
    from attnbench.gpt.model import GPTConfig
    from attnbench.gpt.train import TrainConfig, train

    dataset = Dataset.load(data_path)
    cfg = TrainConfig(
        max_iters=steps,
        batch_size=16,
        learning_rate=3e-3,
        warmup_iters=20,
        eval_interval=0,
        eval_iters=10,
        device=device,
        progress=False,
    )
    model_cfg = GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64, backend="manual")
    result = train(cfg, model_cfg, dataset, log=lambda s: None)
    val = result.history[-1]["val_loss"] if result.history else float("nan")
    log(f"heat map model: {steps} steps, val loss {val:.3f}")
    return result.model, result.tokenizer, val


def compute(model, tokenizer, prompt: str, backends: list[str], device: str, layer: int = -1) -> dict:
    """heatmap.json content: the prompt, per-backend matrices (or why skipped), max |P_a - P_ref|."""
    idx = torch.tensor([tokenizer.encode(prompt)], device=device)  # (1, T)
    mats, skipped = {}, {}
    for name in backends:
        why = get_backend(name).why_unsupported(device, torch.float32)
        if why:
            skipped[name] = why
            continue
        try:
            mats[name] = model_attention(model, idx, name, layer).float().cpu()  # (H, T, T)
        except Exception as e:  # a broken backend must not sink the report: say why
            skipped[name] = f"{type(e).__name__}: {e}"
    ref = next(iter(mats), None)
    diffs = {n: float((m - mats[ref]).abs().max()) for n, m in mats.items()} if ref else {}
    return {
        "prompt": prompt,
        "tokens": [tokenizer.decode([i]) for i in idx[0].tolist()],
        "layer": layer if layer >= 0 else len(model.blocks) + layer,
        "reference": ref,
        "matrices": {n: m.mul(1e4).round().div(1e4).tolist() for n, m in mats.items()},  # 4 decimals: small file
        "max_abs_diff_vs_reference": diffs,
        "skipped": skipped,
    }
