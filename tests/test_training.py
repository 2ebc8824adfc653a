"""Training: one step lowers the loss, schedule, precise evaluation, checkpoints across backends, exact resume,
Ctrl-C keeps progress, and every CPU backend trains to the same loss as sdpa (reduced scale)."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from attnbench.conformance.backends import backend_params
from attnbench.gpt.checkpoint import CheckpointError, Interrupted, last_checkpoint_path, load_checkpoint
from attnbench.gpt.data import Dataset, all_windows
from attnbench.gpt.train import TrainingDiverged, evaluate, lr_at, make_optimizer, train
from spine_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    require_backward,
    require_cpu_fp32,
    tiny_dataset,
    tiny_model,
    tiny_model_config,
    tiny_text,
    tiny_train_config,
)

quiet = dict(log=lambda s: None)


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    ds = tiny_dataset()
    model = tiny_model(vocab_size=ds.tokenizer.vocab_size).train()
    opt = make_optimizer(model, tiny_train_config())
    x, y = ds.train[:64].view(4, 16), ds.train[1:65].view(4, 16)  # (B, T)
    before = model(x, y)[1]
    before.backward()
    opt.step()
    after = model(x, y)[1]
    assert after.item() < before.item()


def test_lr_schedule():
    cfg = tiny_train_config(max_iters=100, warmup_iters=10, learning_rate=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5.5e-4)  # halfway through the cosine
    assert lr_at(100, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_precise_evaluation_covers_the_whole_split():
    ds = tiny_dataset()
    model = tiny_model(vocab_size=ds.tokenizer.vocab_size)
    x, y = all_windows(ds.val, 16)  # (N, T)
    expected = torch.nn.functional.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
    assert evaluate(model, ds.val, tiny_train_config(eval_iters=0)) == pytest.approx(expected, rel=1e-6)
    sampled = evaluate(model, ds.val, tiny_train_config(eval_iters=3), torch.Generator().manual_seed(0))
    assert sampled != expected and abs(sampled - expected) < 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sdpa run with a best-val checkpoint."""
    out = tmp_path_factory.mktemp("ckpt") / "best.pt"
    ds = tiny_dataset()
    result = train(tiny_train_config(out=str(out)), tiny_model_config("sdpa"), ds, **quiet)
    return out, ds, result


def test_best_val_checkpoint_is_written_atomically(trained):
    out, _, result = trained
    assert [p.name for p in out.parent.iterdir()] == ["best.pt"]  # no temporary files left behind
    ckpt = torch.load(out, weights_only=True)
    best = min(result.history, key=lambda r: r["val_loss"])
    assert ckpt["step"] == best["step"] and ckpt["best_val"] == best["val_loss"] == result.best_val
    assert {"train_ppl", "val_ppl"} <= set(best) and best["val_ppl"] == pytest.approx(math.exp(best["val_loss"]))
    assert result.steps_done == 12 and len(result.step_times) == 12


@pytest.mark.parametrize("backend", backend_params())
def test_checkpoint_loads_under_every_backend(trained, backend):
    require_cpu_fp32(backend)
    out, ds, _ = trained
    ref, _, _ = load_checkpoint(out)
    model, tok, _ = load_checkpoint(out, backend=backend.name)
    assert model.backend == backend.name and tok.chars == ds.tokenizer.chars
    x = ds.val[:32].view(2, 16)  # (B, T)
    with torch.no_grad():  # inference: forward-only backends load too
        torch.testing.assert_close(model.eval()(x)[0], ref.eval()(x)[0], rtol=1e-5, atol=1e-5)


def run(tmp_path, name, on_eval=None):
    """A tiny run with dropout and watch on, so resume must restore every RNG and the watch text."""
    cfg = tiny_train_config(max_iters=14, eval_interval=5, watch=3, out=str(tmp_path / f"{name}.pt"))
    return train(cfg, tiny_model_config("sdpa", dropout=0.1), tiny_dataset(), on_eval=on_eval, **quiet), cfg


def resume(cfg, path):
    return train(cfg, tiny_model_config("sdpa", dropout=0.1), tiny_dataset(), resume=path, **quiet)


def assert_same_run(a, b):
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]
    assert [r["step"] for r in a.history] == [5, 10, 14]


def test_resume_from_best_checkpoint_equals_uninterrupted(tmp_path, capsys):
    full, _ = run(tmp_path, "full")
    full_watch = capsys.readouterr().out.splitlines()
    assert [line.split("|")[0].split() for line in full_watch] == [["step", str(s)] for s in (3, 6, 9, 12)]
    _, cfg = run(tmp_path, "half", on_eval=lambda row, model: row["step"] == 5)  # stops right after the eval at step 5
    ckpt = torch.load(cfg.out, weights_only=True)
    assert ckpt["step"] == 5 and ckpt["evaluated"]
    capsys.readouterr()
    assert_same_run(full, resume(cfg, cfg.out))
    assert capsys.readouterr().out.splitlines() == full_watch[1:]  # the watch text and losses continue too


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_saves_last_checkpoint_and_resume_equals_uninterrupted(tmp_path, signum):
    full, _ = run(tmp_path, "full")
    previous = signal.getsignal(signum)

    def send_signal(row, model):  # a real signal, delivered in the middle of the run (after the eval at step 5)
        if row["step"] == 5:
            os.kill(os.getpid(), signum)

    with pytest.raises(Interrupted) as stopped:
        run(tmp_path, "int", on_eval=send_signal)
    last = last_checkpoint_path(tmp_path / "int.pt")
    assert last == tmp_path / "int.last.pt" and last.is_file()
    assert stopped.value.signum == signum and stopped.value.saved == last
    assert isinstance(stopped.value, KeyboardInterrupt)  # callers that catch Ctrl-C still do
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["step"] == 6 and not ckpt["evaluated"]  # step 5 finished, then it stopped cleanly
    assert signal.getsignal(signum) is previous  # the handler is restored
    cfg = tiny_train_config(max_iters=14, eval_interval=5, watch=3, out=str(tmp_path / "int2.pt"))
    assert_same_run(full, resume(cfg, last))


PARITY = dict(max_iters=40, learning_rate=1e-2, min_lr=1e-3, eval_interval=0, eval_iters=0)


def final_val_loss(backend: str) -> float:
    ds = tiny_dataset()
    return train(tiny_train_config(**PARITY), tiny_model_config(backend), ds, **quiet).history[-1]["val_loss"]


@pytest.fixture(scope="module")
def sdpa_loss():
    return final_val_loss("sdpa")


@pytest.mark.parametrize("backend", backend_params())
def test_every_cpu_backend_trains_to_the_same_loss_as_sdpa(backend, sdpa_loss, record_property):
    """Reduced-scale version of the 200-step check (measuring/check_backend_training.py runs the full one)."""
    require_cpu_fp32(backend)
    require_backward(backend)
    loss = final_val_loss(backend.name)
    record_property("backend", backend.name)
    record_property("max_err", abs(loss - sdpa_loss))
    record_property("bound", 1e-3)
    assert sdpa_loss < math.log(tiny_dataset().tokenizer.vocab_size) - 0.5  # it did learn something
    assert abs(loss - sdpa_loss) <= 1e-3, f"{backend.name}: {loss:.6f} vs sdpa {sdpa_loss:.6f}"


@pytest.mark.parametrize("impl", ["foreach", "fused", "loop"])
def test_adamw_implementations_agree(impl):
    ds = tiny_dataset()
    cfg = tiny_train_config(max_iters=5, eval_interval=0, eval_iters=1)
    ref = train(cfg, tiny_model_config(), ds, **quiet).model.state_dict()
    got = train(dataclasses.replace(cfg, adamw_impl=impl), tiny_model_config(), ds, **quiet).model.state_dict()
    for name, p in ref.items():
        torch.testing.assert_close(got[name], p, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="adamw_impl must be one of"):
        make_optimizer(tiny_model(), tiny_train_config(adamw_impl="nope"))


@pytest.mark.parametrize(
    "field,value",
    [("grad_clip", -1.0), ("learning_rate", math.inf), ("weight_decay", math.nan), ("grad_clip", math.nan)]
    + [("batch_size", 0), ("max_iters", 0), ("eval_iters", -1), ("beta1", 1.0), ("device", "bogus"), ("seed", 1.5)],
)
def test_every_config_field_is_validated_at_construction(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_train_config(**{field: value})


def test_a_non_finite_loss_stops_training_with_a_diagnosis(tmp_path):
    def poison(row, model):  # after the eval at step 4, every weight of the embedding becomes NaN
        model.wte.weight.data.fill_(math.nan)

    with pytest.raises(TrainingDiverged, match=r"at step 4: the loss is nan \(last finite loss [\d.]+ at step 3\)"):
        train(tiny_train_config(), tiny_model_config(), tiny_dataset(), on_eval=poison, **quiet)


def test_resume_refuses_data_with_another_vocabulary(trained):
    out, ds, _ = trained
    other = Dataset.from_text(tiny_text().replace("o", "0"))
    assert other.tokenizer.vocab_size == ds.tokenizer.vocab_size  # same size: ids would silently change meaning
    with pytest.raises(CheckpointError, match="another vocabulary"):
        train(tiny_train_config(max_iters=14), tiny_model_config(), other, resume=out, **quiet)


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "ck.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ck.pt.{int(dead.stdout)}.abc123.tmp"  # what a writer killed with SIGKILL leaves
    live = tmp_path / f".ck.pt.{os.getpid()}.xyz789.tmp"  # a writer that is still running (this process)
    stale.write_bytes(b""), live.write_bytes(b"")
    logged = []
    train(tiny_train_config(max_iters=4, out=str(out)), tiny_model_config(), tiny_dataset(), log=logged.append)
    assert not stale.exists() and live.exists() and out.is_file()
    assert any(str(stale) in line and "removed" in line for line in logged), logged


def test_a_resumed_run_that_finishes_removes_the_last_checkpoint_it_continued(tmp_path):
    def stop(row, model):
        if row["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        run(tmp_path, "r", on_eval=stop)
    last = last_checkpoint_path(tmp_path / "r.pt")
    cfg = tiny_train_config(max_iters=14, eval_interval=5, watch=3, out=str(tmp_path / "r.pt"))
    assert last.is_file() and resume(cfg, last).steps_done == 14
    assert not last.exists() and (tmp_path / "r.pt").is_file()
