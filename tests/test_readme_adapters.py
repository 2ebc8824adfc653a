"""The README's worked adapters (a transformers function, a JAX kernel), run exactly as printed: each code block
under an `<!-- adapter: FILE -->` marker is written to FILE in a scratch directory and judged by `attnbench check`
there, as a user would: each must PASS the quick selection, and PASS with its declared departures shown by the
properties that see them. Skipped, with the install line, where its library is missing. Wall time on 2 busy cores:
transformers 0.8 + 0.4 min, JAX 5.3 + 1.1 min (XLA compiles each new shape)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
ADAPTER = re.compile(r"<!-- adapter: (\S+) -->\n```python\n(.*?)```", re.S)


def adapters() -> dict[str, str]:
    return dict(ADAPTER.findall(README.read_text()))


def test_the_readme_has_both_worked_adapters():
    assert set(adapters()) == {"hf_eager_adapter.py", "jax_adapter.py"}


@pytest.mark.parametrize(
    "file, package, args, verdict",
    [
        ("hf_eager_adapter.py", "transformers", ["--quick"], "PASS  (7 properties passed, 0 failed, 0 skipped)"),
        (
            "hf_eager_adapter.py",
            "transformers",
            ["--", "-k", "empty_row or nan_contract"],
            "PASS  (1 properties passed, 0 failed, 0 skipped, 2 declared",
        ),
        # JAX compiles every new shape (seconds each on 2 cores) and has no backward
        ("jax_adapter.py", "jax", ["--quick"], "PASS  (6 properties passed, 0 failed, 1 skipped)"),
        (
            "jax_adapter.py",
            "jax",
            ["--", "-k", "departure or nan_contract"],
            "PASS  (0 properties passed, 0 failed, 0 skipped, 2 declared",
        ),
    ],
    ids=["transformers-quick", "transformers-departures", "jax-quick", "jax-departures"],
)
def test_a_readme_adapter_passes_check_as_printed(tmp_path, file, package, args, verdict):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed: pip install 'attnbench[{package}]'")
    (tmp_path / file).write_text(adapters()[file])
    spec = f"{file.removesuffix('.py')}:attention"
    cmd = [sys.executable, "-m", "attnbench.bench.cli", "check", spec, *args]
    run = subprocess.run(
        cmd, cwd=tmp_path, env=dict(os.environ, CI="true"), capture_output=True, text=True, timeout=900
    )
    table = run.stdout[run.stdout.rfind("conformance verdict") :]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert f"{spec}: {verdict}" in table, table
