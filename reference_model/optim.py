"""The GPT's optimizers: AdamW, or Muon on the blocks' weight matrices with AdamW on everything else.

Both decay only 2-D weight matrices (never biases, norms or embeddings). Muon orthogonalizes each matrix's
momentum (Newton-Schulz) and scales its step to AdamW's update size (`adjust_lr_fn="match_rms_adamw"`), so one
learning rate and one schedule drive both parts. The tied embedding / LM head stays with AdamW: it is an
embedding table, not a linear map between hidden states, and Muon is not meant for it.
"""

from __future__ import annotations

import torch

from .model import GPT

ADAMW_IMPLS = {"foreach": dict(foreach=True), "fused": dict(fused=True), "loop": dict(foreach=False)}
OPTIMIZERS = ("adamw", "muon")


class Optimizers:
    """Several optimizers stepped as one: their param_groups side by side (the schedule sets each group's lr),
    one state_dict, one zero_grad and one step over all of them."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        """Read anew each time: load_state_dict replaces a part's group dicts."""
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        parts = state_dict.get("optimizers")
        if parts is None or len(parts) != len(self.optimizers):
            raise ValueError(
                f"optimizer state holds {len(parts) if parts else 'no'} parts, this optimizer has "
                f"{len(self.optimizers)}: the checkpoint was trained with another optimizer"
            )
        for o, s in zip(self.optimizers, parts, strict=True):
            o.load_state_dict(s)


def make_optimizer(model: GPT, cfg) -> torch.optim.Optimizer | Optimizers:
    """The optimizer `cfg.optimizer` names (a TrainConfig: lr, betas, weight decay, AdamW kernel) for `model`."""
    if cfg.adamw_impl not in ADAMW_IMPLS:
        raise ValueError(f"adamw_impl must be one of {', '.join(ADAMW_IMPLS)}, got {cfg.adamw_impl!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    embeddings = {id(model.wte.weight), id(model.wpe.weight)}
    matrices = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in embeddings]
    rest = [p for p in model.parameters() if p.dim() < 2 or id(p) in embeddings]
    adamw = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **ADAMW_IMPLS[cfg.adamw_impl])
    if cfg.optimizer == "adamw":
        groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, **adamw)
    muon = torch.optim.Muon(
        matrices, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw"
    )
    return Optimizers(muon, torch.optim.AdamW(rest, weight_decay=0.0, **adamw))
