"""The options of the benchmarks and the main job, parsed in one place: lists, T ranges, devices, dtypes, threads;
and the run plan resolved from them, with each stage's defaults.

The CLI, the benchmark plugin (suites/conftest.py) and the standalone scripts parse through these functions.
`RunConfig.resolve` decides once what every stage runs (backends, devices, dtypes, the T of each sweep, the
training's backends and recipe, the heat map's steps and device); `attnbench run` writes the resolved config to
the run directory (run-config.json) and every stage reads that file (`--bench-config=PATH`) instead of
re-encoding flags; the plugin run alone resolves its own options the same way. Every parser raises ValueError
with a one-line message.
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


POW2 = [2**i for i in range(7, 15)]  # 128 .. 16384


@dataclass(frozen=True)
class DeviceDefaults:
    B: int  # batch
    H: int  # heads
    D: int  # head size
    Ts: list[int]  # sequence lengths of the op sweep
    quick_Ts: list[int]  # ... with --quick
    dtypes: list[str]
    interleaved_Ts: list[int]  # one interleaved configuration per T (fwd+bwd)
    max_call_s: float  # a case whose call is estimated slower than this is skipped (with the estimate)
    row_budget_s: float  # timed seconds per op row; sets the number of rounds


# CPU: 4 heads (not 8) so that the whole default sweep fits in a few minutes on 2 cores; D=64 is the usual head size.
DEVICE_DEFAULTS = {
    "cpu": DeviceDefaults(1, 4, 64, POW2[:6], [128, 256, 512], ["float32"], [1024, 2048, 4096], 10.0, 1.0),
    "cuda": DeviceDefaults(1, 8, 64, POW2, [128, 512, 2048], ["bfloat16", "float16"], [1024, 4096, 16384], 5.0, 0.5),
}
QUICK_INTERLEAVED_T = [256]
FEATURE_TS = POW2[3:7]  # 1024 .. 8192: the feature sweep (bench_features.py), where a window's linear cost shows
QUICK_FEATURE_TS = [128, 256]
FEATURE_BACKENDS = ["chunked", "sdpa_flash", "manual", "flex"]  # the feature sweep's default selection
TTT_DEFAULT_BACKENDS = ["sdpa", "manual"]  # PyTorch's fused kernel and the explicit-mask formula: ~3 min on CPU


@dataclass(frozen=True)
class StageOptions:
    """Options of single stages, as the benchmark plugin takes them (--bench-interleaved-T, --ttt-*). `attnbench run`
    has none: its T, backends and quick reach every stage (RunConfig.stage_options)."""

    interleaved_T: list[int] | None = None  # T of the interleaved ratios; None: the device's default
    ttt_backends: list[str] | None = None  # trained to the target loss; None: chosen by training_backends
    ttt_quick: bool = False  # the quick recipe, on every backend that trains on CPU
    ttt_full: bool = False  # every backend that trains on CPU
    ttt_recipe: str = "fast"  # a name of train_to_target.RECIPES


def training_backends(stage: StageOptions, recipe: str) -> list[str]:
    """The backends trained to the target: those asked; else every registered one for a recipe whose attention
    needs features (those without them skip, saying why); every one that trains on CPU with --ttt-full or quick
    (those that cannot run on a device skip with the reason); else TTT_DEFAULT_BACKENDS."""
    from attnbench import backend_names

    from .measuring.train_to_target import RECIPES, cpu_backends

    if stage.ttt_backends:
        return stage.ttt_backends
    if RECIPES[recipe].model_config("").attention_features():
        return backend_names()
    return cpu_backends("cpu") if stage.ttt_full or stage.ttt_quick else TTT_DEFAULT_BACKENDS


@dataclass
class RunConfig:
    """What `attnbench run` was asked for, and once resolved (`resolve`) what every stage runs: one serialized
    configuration that every stage reads."""

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
    # each stage's defaults, resolved once (resolve; None until then): the stages read them, deciding nothing
    devices: list[str] | None = None  # from `device`
    dtypes: dict[str, list[str]] | None = None  # device -> dtypes of the benchmarks: `dtype`, else the device's
    Ts: dict[str, list[int]] | None = None  # device -> T of the op sweep: `T`, else the device's (quick) sweep
    interleaved_Ts: dict[str, list[int]] | None = None  # device -> T of the interleaved ratios
    feature_backends: list[str] | None = None  # the feature sweep's: `backends`, else FEATURE_BACKENDS registered
    feature_Ts: list[int] | None = None  # the feature sweep's: `T`, else FEATURE_TS (quick: QUICK_FEATURE_TS)
    ttt_backends: list[str] | None = None  # trained to the target loss (training_backends)
    ttt_recipe: str | None = None  # the training's recipe, a name of train_to_target.RECIPES
    heat_device: str | None = None  # the heat-map model's: cuda when `device` is cuda, else cpu

    def stage_options(self) -> StageOptions:
        """The single stages' options that attnbench run's own give: its T, backends and quick reach every stage (the
        ratios at the largest three T of the sweep, the training on the backends asked, quick when quick)."""
        ratio_T = self.T[-3:] if self.T else None
        return StageOptions(interleaved_T=ratio_T, ttt_backends=self.backends, ttt_quick=self.quick)

    def resolve(self, stage: StageOptions | None = None) -> RunConfig:
        """This configuration with every stage's defaults resolved, as every stage of one run reads it. `stage`: the
        options of single stages (the benchmark plugin's own); None: those attnbench run's options give."""
        from attnbench import backend_names

        stage = stage or self.stage_options()
        devices = parse_devices(self.device)
        defaults = {d: DEVICE_DEFAULTS[d] for d in devices}
        ratio_T = stage.interleaved_T or (QUICK_INTERLEAVED_T if self.quick else None)  # else each device's default
        recipe = "quick" if stage.ttt_quick else stage.ttt_recipe
        return replace(
            self,
            run_backends=self.backends or backend_names(),
            devices=devices,
            dtypes={d: self.dtype or x.dtypes for d, x in defaults.items()},
            Ts={d: self.T or (x.quick_Ts if self.quick else x.Ts) for d, x in defaults.items()},
            interleaved_Ts={d: ratio_T or x.interleaved_Ts for d, x in defaults.items()},
            feature_backends=self.backends or [b for b in FEATURE_BACKENDS if b in backend_names()],
            feature_Ts=self.T or (QUICK_FEATURE_TS if self.quick else FEATURE_TS),
            ttt_backends=training_backends(stage, recipe),
            ttt_recipe=recipe,
            heat_steps=self.heat_steps or (150 if self.quick else 500),
            heat_device="cuda" if self.device == "cuda" else "cpu",
        )

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, path: str | Path) -> RunConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
