"""The one GPT: nanoGPT-shaped, with the attention computation delegated to a named backend.

Token + learned position embeddings, pre-LN blocks (attention, GELU MLP), final LayerNorm, weight-tied LM
head, GPT-2 init (residual projections scaled by 1/sqrt(2 * n_layer)). The attention module owns the fused
`c_attn` (C -> C for q plus 2 * n_kv_head * head_size for k and v) and `c_proj`; the backend only computes
attention, so one state_dict serves every backend that supports the model's features (grouped-query
attention when n_kv_head < n_head, a sliding window) and the backend can be switched on a live model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from attnbench import Backend, get_backend

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: k, v of shape (B, n_kv_head, T_past, D)


@dataclass
class GPTConfig:
    block_size: int = 64  # longest context the model sees; position embeddings exist only up to here
    vocab_size: int = 65  # distinct characters of tiny Shakespeare
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention (query) heads; head size is n_embd // n_head
    n_kv_head: int | None = None  # key/value heads, dividing n_head (GQA; 1 is MQA); None: n_head (plain MHA)
    n_embd: int = 128  # model width C
    dropout: float = 0.0  # on attention weights, residual branches and embeddings while training
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2
    window: int | None = None  # sliding window: each token attends to itself and the window - 1 before it
    backend: str = "sdpa"  # attention backend by registry name (see attnbench.backend_names())
    # Under a bfloat16 autocast, run the attention backend in float32 (q, k, v cast up, the output cast back):
    # the matmuls around it keep bf16's speed, and the backend is judged in the precision it is tested in.
    # PyTorch's CPU flash kernel takes ~6x longer for its bf16 backward than for its fp32 one at the GPT's sizes.
    attention_fp32: bool = False

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_kv_head is not None and not (
            1 <= self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0
        ):
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 or None, got {self.window}")

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def attention_features(self) -> list[str]:
        """The contract features (attnbench.FEATURES) this model's attention needs from its backend."""
        return (["gqa"] if self.kv_heads != self.n_head else []) + (["window"] if self.window is not None else [])


def backend_for(config: GPTConfig, name: str) -> Backend:
    """The backend `name`, refused (ValueError, with its reason) if it lacks a feature the model needs; a refusal
    that depends on the device comes from the backend call itself."""
    backend = get_backend(name)
    missing = [f for f in config.attention_features() if f not in backend.features]
    if missing:
        reasons = "; ".join(backend.why_no_feature(f, "cpu") for f in missing)
        raise ValueError(f"backend {name!r} cannot run this GPT ({', '.join(missing)}): {reasons}")
    return backend


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.kv_heads
        self.head_size = config.n_embd // config.n_head
        self.window = config.window
        self.dropout = config.dropout
        self.attention_fp32 = config.attention_fp32
        kv_width = self.n_kv_head * self.head_size
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_width, bias=config.bias)  # q, k, v fused
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.backend = backend_for(config, config.backend)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        B, T, C = x.shape  # batch, new tokens, width
        D, kv_width = self.head_size, self.n_kv_head * self.head_size
        q, k, v = self.c_attn(x).split([C, kv_width, kv_width], dim=2)  # (B, T, C), (B, T, Hkv * D) twice
        q = q.view(B, T, self.n_head, D).transpose(1, 2)  # (B, H, T, D)
        k, v = (t.view(B, T, self.n_kv_head, D).transpose(1, 2) for t in (k, v))  # (B, Hkv, T, D)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, Hkv, T_past + T, D)
            v = torch.cat([past[1], v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        if self.attention_fp32 and q.dtype in (torch.bfloat16, torch.float16):  # autocast gave a half dtype
            with torch.autocast(q.device.type, enabled=False):
                y = self.backend(q.float(), k.float(), v.float(), causal=True, dropout_p=dropout_p, window=self.window)
            y = y.to(q.dtype)  # (B, H, T, D), back in autocast's dtype
        else:
            y = self.backend(q, k, v, causal=True, dropout_p=dropout_p, window=self.window)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, past=None):
        a, present = self.attn(self.ln_1(x), past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def backend(self) -> str:
        return self.config.backend

    def set_backend(self, name: str) -> GPT:
        """Switch the attention backend of every layer in place (parameters untouched)."""
        backend = backend_for(self.config, name)
        for block in self.blocks:
            block.attn.backend = backend
        self.config.backend = name
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """idx: (B, T) token ids. Returns (logits (B, T, vocab), loss or None, new cache).

        With `cache` (one (k, v) per layer from earlier calls), idx holds only the new tokens and their
        positions continue after the cached ones.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        past_len = 0 if cache is None else cache[0][0].size(2)
        if past_len + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past_len + T} tokens exceeds block_size {self.config.block_size}"
                + (f" ({past_len} cached + {T} new)" if past_len else "")
            )
        pos = torch.arange(past_len, past_len + T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, None if cache is None else cache[i])
            new_cache.append(present)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss, new_cache

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample max_new_tokens after idx (B, T). Same seed, same text, with or without the KV cache.

        The context is cropped to the last block_size tokens; with the cache, once it is full the cache is
        rebuilt from the cropped context, so both paths condition on exactly the same tokens.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            if use_cache and cache is not None and cache[0][0].size(2) < self.config.block_size:
                logits, _, cache = self(idx[:, -1:], cache=cache)
            else:
                logits, _, cache = self(context)
            logits = logits[:, -1, :] / temperature  # (B, vocab)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, idx_next], dim=1)
            if not use_cache:
                cache = None
        return idx
