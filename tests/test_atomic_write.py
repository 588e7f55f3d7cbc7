"""ser_stack.files.write_atomically: the one atomic file write of every layer."""

from __future__ import annotations

import multiprocessing
import os
import stat

import pytest

from ser_stack.files import write_atomically


def test_text_and_bytes_replace_the_file_whole(tmp_path):
    path = tmp_path / "deep" / "folder" / "result.json"
    assert write_atomically(path, "é\n") == path
    assert path.read_bytes() == "é\n".encode()
    write_atomically(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "index.json"
    write_atomically(path, "old")
    with pytest.raises(TypeError):
        write_atomically(path, ["not", "bytes"])  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_mode_is_set_before_the_content_is_there(tmp_path):
    secret = tmp_path / "s3-credentials.json"
    write_atomically(secret, '{"secret_access_key": "x"}', mode=0o600)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    plain = write_atomically(tmp_path / "plain.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def _write_many(path: str, marker: str) -> None:
    for _ in range(200):
        write_atomically(path, marker * 10_000)


def test_concurrent_writers_never_leave_a_mixed_file(tmp_path):
    """Two processes writing the same file: a reader sees one writer's content or the other's."""
    path = tmp_path / "key.json"
    write_atomically(path, "a" * 10_000)
    # spawn, not fork: a fork of the suite's process copies whatever locks its threads hold
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(path), m)) for m in "ab"]
    for writer in writers:
        writer.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        seen.add(path.read_text())
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert seen <= {"a" * 10_000, "b" * 10_000}
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]
