"""The training step and the optimizers: Muon takes exactly the blocks' matrices, a Muon run is deterministic and
resumes exactly, TrainStep is the plain step, the compiled step follows a backend switch, and the nanoGPT
side-by-side refuses a file that is not nanoGPT's."""

from __future__ import annotations

import os

import pytest
import torch
from attnbench.bench.measuring.side_by_side import load_nanogpt
from attnbench.gpt.optim import Optimizers
from attnbench.gpt.step import TrainStep
from attnbench.gpt.train import make_optimizer, train
from spine_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    tiny_dataset,
    tiny_model,
    tiny_model_config,
    tiny_train_config,
)

quiet = dict(log=lambda s: None)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_model()
    opt = make_optimizer(model, tiny_train_config(optimizer="muon"))
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    expected = {id(p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert in_muon == expected
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert in_adamw == {id(p) for p in model.parameters()} - expected  # the tied embedding / head among them
    assert id(model.wte.weight) in in_adamw
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer(model, tiny_train_config(optimizer="sgd"))


def test_muon_run_is_deterministic_and_learns():
    ds = tiny_dataset()
    cfg = tiny_train_config(optimizer="muon", learning_rate=1e-2, min_lr=1e-3, max_iters=20, eval_iters=0)
    a = train(cfg, tiny_model_config(), ds, **quiet)
    b = train(cfg, tiny_model_config(), ds, **quiet)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    first, last = a.history[0]["val_loss"], a.history[-1]["val_loss"]
    assert last < first - 0.3, (first, last)


def test_muon_resume_equals_uninterrupted(tmp_path):
    ds = tiny_dataset()
    cfg = tiny_train_config(optimizer="muon", max_iters=10, eval_interval=5, out=str(tmp_path / "m.pt"))
    full = train(cfg, tiny_model_config(), ds, **quiet)
    half = tiny_train_config(optimizer="muon", max_iters=10, eval_interval=5, out=str(tmp_path / "h.pt"))
    train(half, tiny_model_config(), ds, on_eval=lambda row, model: row["step"] == 5, **quiet)
    resumed = train(half, tiny_model_config(), ds, resume=half.out, **quiet)
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="another optimizer"):
        make_optimizer(tiny_model(), tiny_train_config(optimizer="muon")).load_state_dict(
            make_optimizer(tiny_model(), tiny_train_config()).state_dict()
        )


def hand_step(model, opt, x, y, clip):
    """The step as written out by hand: forward, backward, clip, update."""
    _, loss, _ = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_train_step_is_the_hand_written_step(optimizer):
    cfg = tiny_train_config(optimizer=optimizer, grad_clip=0.05)  # a clip that bites: a step without it differs
    a, b = tiny_model().train(), tiny_model().train()
    step, opt_b = TrainStep(a, make_optimizer(a, cfg), grad_clip=cfg.grad_clip), make_optimizer(b, cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randint(a.config.vocab_size, (2, 4, 16), generator=g)  # (B, T) each
        assert torch.equal(step(x, y), hand_step(b, opt_b, x, y, cfg.grad_clip))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert all(p.grad is None for p in a.parameters())  # gradients cleared after the update


@pytest.mark.skipif(
    not os.environ.get("ATTNBENCH_COMPILE_TESTS"),
    reason="compiling the step takes minutes on a busy 2-core CPU: set ATTNBENCH_COMPILE_TESTS=1 to run it",
)
def test_compiled_step_matches_eager_and_follows_a_backend_switch():
    """torch.compile must not freeze the backend it first saw: after set_backend the compiled step computes with
    the new one (here a backend without the causal mask, whose loss differs)."""
    from mutants import no_causal_mask

    cfg = tiny_train_config(grad_clip=1.0)
    a, b = tiny_model(n_layer=1).train(), tiny_model(n_layer=1).train()
    compiled = TrainStep(a, make_optimizer(a, cfg), grad_clip=1.0, compile=True)
    eager = TrainStep(b, make_optimizer(b, cfg), grad_clip=1.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(a.config.vocab_size, (2, 4, 16), generator=g)  # (B, T) each
    for _ in range(2):
        torch.testing.assert_close(compiled(x, y), eager(x, y), rtol=1e-5, atol=1e-5)
    for m in (a, b):
        m.set_backend(f"{no_causal_mask.__module__}:{no_causal_mask.__name__}")
    torch.testing.assert_close(compiled(x, y), eager(x, y), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_load_nanogpt_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no nanoGPT model.py"):
        load_nanogpt(tmp_path)
    (tmp_path / "model.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="not nanoGPT's model.py"):
        load_nanogpt(tmp_path)


def test_optimizers_step_every_part():
    w1, w2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Optimizers(torch.optim.SGD([w1], lr=1.0), torch.optim.SGD([w2], lr=0.5))
    (w1.sum() + w2.sum()).backward()
    opt.step()
    assert torch.equal(w1.detach(), torch.zeros(2)) and torch.equal(w2.detach(), torch.full((2,), 0.5))
    assert len(opt.param_groups) == 2
