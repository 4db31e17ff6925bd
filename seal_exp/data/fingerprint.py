"""A dataset's content as a short hash, so that pointing ``dataset.root`` at other data never reuses a
result, a checkpoint or a teacher trained on the old data.

The job identity leaves out where data lives (``dataset.root``): the same files elsewhere are the same
job. The fingerprint says what is there. It is recorded with every run (MLflow tag ``seal.data``,
``summary.json``, ``last.pt``, the cached teacher's record) and compared wherever one of those is reused.

Each dataset hashes the cheapest thing that changes with its samples, without decoding any:
the bytes of its few files (CIFAR's batches, the files the embedded sets ship in), the names and sizes
of a frame cache's files, the image names per class folder (ImageNet: 1.28 M files, so names only).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DIGITS = 16

_content_cache: dict[tuple[str, int, int], str] = {}
_names_cache: dict[tuple[Any, ...], str] = {}


def _finish(digest: Any) -> str:
    return digest.hexdigest()[:DIGITS]


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes, once per process for an unchanged file (same size and mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _content_cache:
        with path.open("rb") as f:
            _content_cache[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _content_cache[key]


def of_files(root: Path, files: Iterable[Path]) -> str:
    """The bytes of ``files`` (named relative to ``root``): a change of any byte changes it."""
    digest = hashlib.sha256(b"files\0")
    for path in files:
        digest.update(f"{Path(path).relative_to(root).as_posix()}\0{_file_digest(Path(path))}\0".encode())
    return _finish(digest)


def of_file(path: Path) -> str:
    """The bytes of one file (under its own name)."""
    return of_files(path.parent, [path])


def of_listing(folder: Path, suffix: str) -> str:
    """Relative names and sizes of every ``*suffix`` file under ``folder`` (nothing is read)."""
    digest = hashlib.sha256(b"listing\0")
    for path in sorted(folder.rglob(f"*{suffix}")):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
    return _finish(digest)


def of_names(folders: Iterable[Path]) -> str:
    """The file names in each class sub-folder of ``folders`` (no file is opened or stat-ed): moving an
    image to another class, adding or removing one changes it.

    Listed once per process while no class folder changes (a job asks up to three times: before its
    teacher is reused, at its start, after the read; ImageNet's listing takes seconds). Adding, removing
    or renaming a file changes its folder's mtime, which is part of the memo's key."""
    folders = [Path(f) for f in folders]
    state = []
    for folder in folders:
        with os.scandir(folder) as classes:
            dirs = sorted((e.name, e.stat().st_mtime_ns) for e in classes if e.is_dir())
        state.append((str(folder.resolve()), folder.stat().st_mtime_ns, tuple(dirs)))
    key = tuple(state)
    if key not in _names_cache:
        digest = hashlib.sha256(b"names\0")
        for folder, (_, _, class_dirs) in zip(folders, state, strict=True):
            for name, _ in class_dirs:
                with os.scandir(folder / name) as entries:
                    files = sorted(e.name for e in entries)
                digest.update(f"{folder.name}/{name}\0".encode() + "\0".join(files).encode() + b"\n")
        _names_cache[key] = _finish(digest)
    return _names_cache[key]
