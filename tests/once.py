"""Expensive test data built once per session, shared by the pytest-xdist workers."""
import os
from pathlib import Path

from filelock import FileLock


def computed_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` run once per test session, whichever pytest-xdist worker asks first; the
    others wait for it and read the same folder. (A session fixture alone is built once per
    worker, and xdist's ``loadgroup`` is not honoured by this pytest: pytest-xdist issue #1386.)"""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base folders share this parent
    folder = root / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".done").is_file():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / ".done").touch()
    return folder
