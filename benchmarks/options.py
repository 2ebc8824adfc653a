"""The options of the benchmarks and the main job, parsed in one place: lists, T ranges, devices, dtypes, threads.

The CLI, the benchmark plugin (suites/conftest.py) and the standalone scripts parse through these functions;
`attnbench run` writes one `RunConfig` to the run directory (run-config.json) and every stage reads that file
(`--bench-config=PATH`) instead of re-encoding flags. Every parser raises ValueError with a one-line message.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

DEVICE_CHOICES = ("cpu", "cuda", "all")


def csv_list(text: str | None) -> list[str] | None:
    """'a, b,,c' -> ['a', 'b', 'c']; None stays None (the option was not given)."""
    if text is None:
        return None
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_T(spec: str | None, option: str = "--T") -> list[int] | None:
    """'128,256,1024' as given, or 'LO:HI' for the powers of two from LO to HI; each T a positive integer."""
    if spec is None:
        return None
    error = ValueError(f"{option} must be a list like 128,256,512 or a range LO:HI (powers of two), got {spec!r}")
    try:
        if ":" in spec:
            lo, hi = (int(x) for x in spec.split(":"))
            if lo < 1 or hi < lo:
                raise error
            out, t = [], 1 << (lo - 1).bit_length()
            while t <= hi:
                out.append(t)
                t *= 2
        else:
            out = [int(x) for x in csv_list(spec)]
    except ValueError:
        raise error from None
    if not out or any(t < 1 for t in out):
        raise error
    return out


def parse_devices(option: str | None, cuda_available: bool | None = None) -> list[str]:
    """Devices to run on: None -> cpu, plus cuda when available; 'all' -> both; else the one named."""
    if option is not None and option not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {option!r}")
    if option == "all":
        return ["cpu", "cuda"]
    if option:
        return [option]
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return ["cpu"] + (["cuda"] if cuda_available else [])


def parse_dtypes(names: list[str] | None, option: str = "--dtype") -> list[str] | None:
    """Names of torch floating dtypes ('float32', 'bfloat16', ...), checked against torch."""
    if names is None:
        return None
    import torch

    for name in names:
        dtype = getattr(torch, name, None)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"{option}: {name!r} is not a torch floating dtype (float32, bfloat16, float16, ...)")
    return names


NAME_MAX = 100  # characters of a report name


def parse_name(name: str | None) -> str | None:
    """A report directory's name: one plain path component, so that no run can write outside --out-dir or onto
    it (`.`, `..`, separators), hide itself (a leading dot is a run in progress) or carry control characters."""
    if name is None:
        return None
    bad = (
        "is empty" if not name
        else f"is {len(name)} characters long (at most {NAME_MAX})" if len(name) > NAME_MAX
        else "has a path separator" if "/" in name or "\\" in name or os.sep in name
        else "starts with a dot" if name.startswith(".")
        else "has a control character" if any(ord(c) < 32 or ord(c) == 127 for c in name)
        else None
    )  # fmt: skip
    if bad:
        raise ValueError(f"--name {name[:40]!r}{'...' if len(name) > 40 else ''} {bad}: give one plain file name")
    return name


def parse_backends(names: list[str] | None, option: str = "--backends") -> list[str] | None:
    """Backends in the order given: registered names and 'package.module:function' specs, each resolved now
    (attnbench.get_backend) so that an unknown name or a broken spec is one line before anything runs."""
    if names is None:
        return None
    from attnbench import UnknownBackendError, get_backend

    for name in names:
        try:
            get_backend(name)
        except UnknownBackendError as e:
            raise ValueError(f"{option}: {e}") from None
    return names


def import_from_cwd() -> None:
    """Let a 'module:function' spec name a module of the current directory, here and in every subprocess
    (the stages of `attnbench run` run in a scratch directory of their own): sys.path and PYTHONPATH."""
    import os
    import sys

    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd, os.environ.get("PYTHONPATH")]))


def parse_threads(text: str | None, default: int) -> int | None:
    """A positive thread count, or 'all' (None: torch's own setting)."""
    text = text or str(default)
    if text == "all":
        return None
    if not (text.isdigit() and int(text) > 0):
        raise ValueError(f"--bench-interleaved-threads takes a positive integer or 'all', got {text!r}")
    return int(text)


def positive_finite(value: float | None, option: str) -> float | None:
    """A float option that must be finite and > 0 (None: not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{option} must be a finite number > 0, got {value!r}")
    return value


@dataclass
class RunConfig:
    """What `attnbench run` was asked for: one serialized configuration that every stage reads."""

    backends: list[str] | None = None  # as asked; None: every registered backend
    # the backends every stage runs: `backends`, else every registered one, resolved once by the main job (resolve)
    run_backends: list[str] | None = None
    T: list[int] | None = None  # None: the benchmarks' default sweep
    dtype: list[str] | None = None  # dtypes of the op benchmarks; None: the benchmarks' default per device
    device: str | None = None  # cpu | cuda | all; None: cpu, plus cuda when available
    quick: bool = False  # the small sweep (quick op sizes, the quick training recipe): about 5 minutes on 2 cores
    target: float | None = None  # training-to-target loss; None: that benchmark's default
    name: str | None = None  # reports/<name>; None: a timestamp
    out_dir: str = "reports"
    data: str | None = None  # tiny Shakespeare path for the heat-map model (else ATTNBENCH_DATA / cache)
    heat_steps: int | None = None  # training steps of the heat-map model; None: 150 quick, 500 default (resolve)
    correctness_k: str | None = None  # pytest -k expression for the correctness stage; None: the whole suite
    nanogpt: str | None = None  # nanoGPT's model.py (or its folder): bench_model.py times its step against ours
    verbose: bool = False  # stream every subprocess line (else the current test shows beside the bar)
    force: bool = False  # replace an existing reports/<name>

    @property
    def interleaved_T(self) -> list[int] | None:
        """The interleaved ratios are timed at the largest three T of the sweep."""
        return self.T[-3:] if self.T else None

    def resolve(self) -> RunConfig:
        """This configuration with its defaults resolved (the backend list, the heat-map steps), as every stage of
        one run reads it."""
        from attnbench import backend_names

        steps = self.heat_steps or (150 if self.quick else 500)
        return replace(self, run_backends=self.backends or backend_names(), heat_steps=steps)

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, path: str | Path) -> RunConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
