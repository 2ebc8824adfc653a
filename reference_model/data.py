"""Character-level tiny Shakespeare: locating and verifying the file, the tokenizer, the 90/10 split, batches.

Resolution order: an explicit path (argument / --data flag, else the ATTNBENCH_DATA variable), the user
cache, then a verified download from the canonical public URL into that cache. The text itself is never
part of this project.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_ENV = "ATTNBENCH_DATA"
FILE_NAME = "tinyshakespeare.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


class DataError(RuntimeError):
    """The dataset could not be found, downloaded or verified."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnbench"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(path: Path, expected_sha256: str | None) -> Path:
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise DataError(
                f"{path} has sha256 {actual}, expected {expected_sha256}: the file is corrupt or a different "
                "text. Replace it with the original tiny Shakespeare (1,115,394 characters)."
            )
    return path


def resolve_data_path(
    path: str | os.PathLike | None = None,
    *,
    expected_sha256: str | None = SHA256,
    download: bool = True,
    url: str = URL,
) -> Path:
    """Find the dataset file, verify its checksum, and return its path (see the module docstring).

    expected_sha256=None skips verification (for other corpora given explicitly).
    """
    explicit = path if path is not None else os.environ.get(DATA_ENV)
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            source = "given path" if path is not None else f"${DATA_ENV}"
            raise DataError(f"data file {p} (from the {source}) does not exist")
        return _verified(p, expected_sha256)
    cached = cache_dir() / FILE_NAME
    if cached.is_file():
        return _verified(cached, expected_sha256)
    hint = f"Put tiny Shakespeare at {cached}, or pass its path with --data, or set {DATA_ENV}=/path/to/{FILE_NAME}"
    if not download:
        raise DataError(f"no dataset found. {hint}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with (
            urllib.request.urlopen(url, timeout=30) as r,
            tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as tmp,
        ):
            tmp.write(r.read())
        _verified(Path(tmp.name), expected_sha256)
        os.replace(tmp.name, cached)  # only a verified file ever lands in the cache
    except (OSError, DataError) as e:
        if "tmp" in locals():
            Path(tmp.name).unlink(missing_ok=True)
        raise DataError(f"could not download the dataset from {url} ({e}). {hint}") from e
    return cached


class CharTokenizer:
    """Maps each distinct character of a corpus to an id (sorted order, as in the classic tutorials)."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(
                f"character {text[pos]!r} at position {pos} is not in the vocabulary of {self.vocab_size} characters"
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def state_dict(self) -> dict:
        return {"chars": "".join(self.chars)}

    @classmethod
    def from_state_dict(cls, state: dict) -> CharTokenizer:
        return cls(state["chars"])


@dataclass
class Dataset:
    tokenizer: CharTokenizer
    train: torch.Tensor  # (N_train,) int64 token ids, first 90%
    val: torch.Tensor  # (N_val,) int64 token ids, last 10%

    @classmethod
    def from_text(cls, text: str, train_fraction: float = 0.9) -> Dataset:
        tok = CharTokenizer(text)
        data = torch.tensor(tok.encode(text), dtype=torch.long)
        n = int(train_fraction * len(data))
        return cls(tok, data[:n], data[n:])

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **resolve_kwargs) -> Dataset:
        resolved = resolve_data_path(path, **resolve_kwargs)
        try:
            text = resolved.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{resolved} is not UTF-8 text (byte {e.start}): give a plain text file") from None
        if not text:
            raise DataError(f"{resolved} is empty: give a text file to train on")
        return cls.from_text(text)

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val


def get_batch(data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None):
    """Random windows: x (B, T) and y (B, T) = x shifted by one."""
    if len(data) <= block_size:
        raise ValueError(f"split of {len(data)} tokens is too short for block_size {block_size}")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size)  # (T,)
    x = data[ix[:, None] + offsets]  # (B, T)
    y = data[ix[:, None] + offsets + 1]  # (B, T)
    return x, y


def all_windows(data: torch.Tensor, block_size: int):
    """Non-overlapping windows covering the whole split (the precise evaluation): x, y (N, T)."""
    n = (len(data) - 1) // block_size
    if n == 0:
        raise ValueError(f"split of {len(data)} tokens is too short for block_size {block_size}")
    x = data[: n * block_size].view(n, block_size)
    y = data[1 : n * block_size + 1].view(n, block_size)
    return x, y
