"""Make written files survive a power loss before anything says they exist.

A rename is atomic but not durable: until the file's data and its folder's entry reach the disk, a crash can leave
the new name pointing at an empty file, or no name at all. A job store that commits "done" first can then list
images that are gone; so the server syncs the files, then their folders, then commits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def sync_to_disk(paths: Iterable[Path]) -> None:
    """fsync each file (a folder of frames: each file in it), then each folder holding them, once."""
    folders: set[Path] = set()
    for path in paths:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for file in files:
            _fsync(file, os.O_RDONLY)
        folders.add(path.parent)
        if path.is_dir():
            folders.add(path)
    for folder in sorted(folders):
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
