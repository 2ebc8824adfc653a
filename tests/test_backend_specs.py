"""A kernel named by a 'module:function' spec (or 'module:obj', obj an attnbench.Backend) goes through `attnbench run`.

The spec is resolved once, in the CLI, from the current directory; the stages (pytest subprocesses in a scratch
directory of their own) read it from run-config.json and import it through PYTHONPATH. Their rows carry the spec as
the backend's name, so `attnbench compare` matches a baseline and a new run of the same spec.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from attnbench import get_backend
from attnbench.bench.cli import main as cli
from attnbench.bench.options import RunConfig, parse_backends

REPO = Path(__file__).resolve().parents[1]
KERNEL = '''import attnbench


def attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """The plain formula, as a kernel author's own module."""
    return attnbench.attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, backend="manual")


as_backend = attnbench.Backend("own_name", attention, "a Backend object of the kernel author")
'''


@pytest.fixture
def kernel_module(tmp_path, monkeypatch) -> str:
    """A package `<unique>pkg/attn.py` in a fresh current directory (unique: specs and modules are loaded once)."""
    package = f"specpkg_{tmp_path.name.replace('-', '_')}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "attn.py").write_text(KERNEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_from_cwd changes both; restored after the test
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    return f"{package}.attn"


def test_parse_backends_resolves_specs_and_names_a_broken_one(kernel_module, monkeypatch):
    monkeypatch.syspath_prepend(os.getcwd())
    names = [f"{kernel_module}:attention", "manual", f"{kernel_module}:as_backend"]
    assert parse_backends(names) == names
    with pytest.raises(ValueError, match=rf"--bench-backends: cannot load backend '{kernel_module}:missing'"):
        parse_backends(["manual", f"{kernel_module}:missing"], "--bench-backends")
    with pytest.raises(ValueError, match="--backends: unknown attention backend 'no_such_backend'"):
        parse_backends(["no_such_backend"])


def test_a_backend_object_takes_its_spec_as_name(kernel_module, monkeypatch):
    monkeypatch.syspath_prepend(os.getcwd())
    backend = get_backend(f"{kernel_module}:as_backend")
    assert (
        backend.name == f"{kernel_module}:as_backend" and backend.description == "a Backend object of the kernel author"
    )


def test_run_resolves_a_spec_from_the_current_directory_before_any_stage(kernel_module, monkeypatch, capsys):
    from attnbench.bench.job import main_job

    started = []
    monkeypatch.setattr(main_job.Job, "run", lambda self: started.append(self.cfg) or 0)
    assert cli(["run", "--quick", "--backends", f"{kernel_module}:missing,sdpa"]) == 2
    err = capsys.readouterr().err.strip()
    assert not started and len(err.splitlines()) == 1 and f"cannot load backend '{kernel_module}:missing'" in err
    assert cli(["run", "--quick", "--backends", f"{kernel_module}:attention,sdpa"]) == 0
    assert started[0].backends == [f"{kernel_module}:attention", "sdpa"]
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == os.getcwd()  # the stages, elsewhere, import it too


def test_every_benchmark_stage_takes_a_spec_from_the_run_config(kernel_module, tmp_path):
    """The stages' option parsing (suites/conftest.py), as `attnbench run` starts them: --bench-config and
    PYTHONPATH, from another directory; collected, not run."""
    fn, obj = f"{kernel_module}:attention", f"{kernel_module}:as_backend"
    cfg = RunConfig(backends=[fn, "manual", obj], T=[128], device="cpu", quick=True)
    cfg.resolve().write(tmp_path / "run-config.json")  # as the main job writes it
    stages = ["bench_ops.py", "bench_interleaved.py", "bench_features.py", "bench_model.py", "bench_train_to_target.py"]
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "--benchmark-only",
           *(str(REPO / "benchmarks" / "suites" / s) for s in stages), f"--bench-config={tmp_path / 'run-config.json'}",
           f"--rootdir={REPO}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ["PYTHONPATH"]])}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for stage in stages:
        ids = [line for line in done.stdout.splitlines() if line.startswith(f"benchmarks/suites/{stage}::")]
        for spec in (fn, obj):
            assert any(f"[{spec}-" in i for i in ids), f"{stage}: no case of {spec}"
