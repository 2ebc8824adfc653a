"""env.json: what a reader needs to repeat a run (versions, devices and their clocks, CPU model, threads, commit)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


RUN_OUTPUTS = "reports"  # the runs' own output folder: a run writing there does not make the code it ran dirty


def git_info(repo: Path) -> dict:
    """Commit, branch and whether the code differs from the commit (anything changed outside RUN_OUTPUTS)."""

    def git(*args):
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        status = git("status", "--porcelain", "--", ".", f":(exclude){RUN_OUTPUTS}")
        return {
            "commit": git("rev-parse", "HEAD"),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None,
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "branch": None, "dirty": None}


GPU_CLOCKS = "clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem"  # nvidia-smi --query-gpu fields, MHz


def gpu_clocks_mhz(index: int) -> dict | None:
    """Current and maximum SM and memory clocks of GPU `index` from nvidia-smi (None where it is missing)."""
    cmd = ["nvidia-smi", f"--query-gpu={GPU_CLOCKS}", "--format=csv,noheader,nounits", f"--id={index}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    values = out.stdout.strip().split(", ") if out.returncode == 0 else []
    if len(values) != len(GPU_CLOCKS.split(",")):
        return None
    return {
        k: float(v) if v.replace(".", "", 1).isdigit() else v
        for k, v in zip(GPU_CLOCKS.split(","), values, strict=True)
    }


def gpu_details() -> list[dict]:
    """Per CUDA device: name, compute capability, memory, L2 (the cold timings flush twice it), SMs, clocks."""
    if not torch.cuda.is_available():
        return []
    details = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        details.append(
            {
                "name": p.name,
                "compute_capability": f"{p.major}.{p.minor}",
                "total_memory_bytes": p.total_memory,
                "l2_cache_bytes": p.L2_cache_size,
                "multiprocessors": p.multi_processor_count,
                "clocks_mhz": gpu_clocks_mhz(i),
            }
        )
    return details


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    """The environment; `git` describes the checkout attnbench itself runs from (None for an installed wheel)."""
    package_dir = Path(__file__).resolve().parents[2]  # <checkout> for an editable install, site-packages else
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "gpu_details": gpu_details(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **{
            f"{d}_version": _version(d)
            for d in ("attnbench", "numpy", "pandas", "matplotlib", "pytest", "pytest-benchmark")
        },
        "git": git_info(package_dir) if (package_dir / ".git").exists() else None,
    }
