"""Tokenizer, split and batches, and where the dataset comes from (explicit path, $ATTNBENCH_DATA, cache, download)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from attnbench.gpt.data import (
    DATA_ENV,
    FILE_NAME,
    CharTokenizer,
    DataError,
    Dataset,
    all_windows,
    get_batch,
    resolve_data_path,
)
from spine_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    tiny_text,
)

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def test_tokenizer_round_trip_and_sorted_vocabulary():
    tok = CharTokenizer(TEXT)
    assert tok.chars == sorted(set(TEXT)) and tok.vocab_size == len(set(TEXT))
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and tok.decode(torch.tensor(ids)) == TEXT
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert CharTokenizer.from_state_dict(tok.state_dict()).stoi == tok.stoi


def test_unknown_character_is_named_with_its_position():
    tok = CharTokenizer(TEXT)
    with pytest.raises(ValueError, match=r"character 'Z' at position 3 is not in the vocabulary"):
        tok.encode("hea" + "Z" + "r")


def test_split_batches_and_windows():
    ds = Dataset.from_text(tiny_text())
    n = len(ds.train) + len(ds.val)
    assert len(ds.train) == int(0.9 * n) and ds.split("val") is ds.val
    with pytest.raises(ValueError, match="split must be"):
        ds.split("test")
    x, y = get_batch(ds.train, 5, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    wx, wy = all_windows(ds.val, 8)
    assert wx.shape[1] == 8 and torch.equal(wx.flatten()[1:], wy.flatten()[:-1])
    assert len(ds.val) - 1 - wx.numel() < 8  # the windows cover the split except a short tail
    with pytest.raises(ValueError, match="too short"):
        get_batch(ds.val[:8], 2, 8)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No $ATTNBENCH_DATA (CI sets it) and an empty user cache under tmp_path."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "attnbench" / FILE_NAME


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path, hashlib.sha256(text.encode()).hexdigest()


def test_resolution_order(clean_env, tmp_path, monkeypatch):
    cached, sha_c = write(clean_env, "cached")
    from_env, sha_e = write(tmp_path / "env.txt", "from env")
    explicit, sha_x = write(tmp_path / "explicit.txt", "explicit")
    assert resolve_data_path(expected_sha256=sha_c, download=False) == cached
    monkeypatch.setenv(DATA_ENV, str(from_env))
    assert resolve_data_path(expected_sha256=sha_e, download=False) == from_env
    assert resolve_data_path(explicit, expected_sha256=sha_x, download=False) == explicit


def test_missing_files_say_where_to_put_the_data(clean_env, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_path(tmp_path / "nope.txt")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match=rf"\${DATA_ENV}\) does not exist"):
        resolve_data_path()
    monkeypatch.delenv(DATA_ENV)
    with pytest.raises(DataError) as e:
        resolve_data_path(download=False)
    assert str(clean_env) in str(e.value) and DATA_ENV in str(e.value) and "--data" in str(e.value)


def test_checksum_failure(clean_env, tmp_path):
    path, _ = write(tmp_path / "corrupt.txt", "not tiny shakespeare")
    with pytest.raises(DataError, match="sha256"):
        resolve_data_path(path)  # verified against the real tiny Shakespeare checksum
    write(clean_env, "a corrupt cached copy")
    with pytest.raises(DataError, match="sha256"):
        resolve_data_path(download=False)
    assert resolve_data_path(path, expected_sha256=None) == path  # other corpora, explicitly unverified


def test_download_verifies_and_caches(clean_env, tmp_path):
    source, sha = write(tmp_path / "remote.txt", tiny_text(50))
    with pytest.raises(DataError, match="could not download"):
        resolve_data_path(url=source.as_uri(), expected_sha256="0" * 64)  # wrong checksum
    assert not clean_env.exists() and not any(clean_env.parent.iterdir())  # nothing unverified is left behind
    with pytest.raises(DataError, match="could not download"):
        resolve_data_path(url=(tmp_path / "missing.txt").as_uri(), expected_sha256=sha)
    assert resolve_data_path(url=source.as_uri(), expected_sha256=sha) == clean_env  # no network: a file:// URL
    assert clean_env.read_text(encoding="utf-8") == source.read_text(encoding="utf-8")


def test_dataset_load_from_explicit_path(clean_env, tmp_path):
    path, sha = write(tmp_path / "t.txt", TEXT)
    ds = Dataset.load(path, expected_sha256=sha)
    assert ds.tokenizer.decode(torch.cat([ds.train, ds.val]).tolist()) == TEXT
