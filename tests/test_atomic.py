"""Atomic writes: a failed write leaves neither a partial file nor a temporary one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from changedet._atomic import atomic_path, sha256_file, write_json_atomic


def test_atomic_path__failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path__creates_parent_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_write_json_atomic__stable_bytes(tmp_path: Path) -> None:
    a = write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    b = write_json_atomic(tmp_path / "b.json", {"a": [1, 2], "b": 1})
    assert a.read_bytes() == b.read_bytes()


def test_sha256_file__matches_hashlib(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    data = bytes(range(256)) * 5000
    p.write_bytes(data)
    assert sha256_file(p, chunk=1000) == hashlib.sha256(data).hexdigest()


def test_atomic_path__output_is_readable_by_others(tmp_path: Path) -> None:
    target = tmp_path / "shared.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    assert target.stat().st_mode & 0o044 == 0o044
