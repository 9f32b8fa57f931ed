"""A small filesystem of a test's own, to fill up: a real full disk, not a mocked write."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import unavailable


@contextmanager
def tmpfs(mount: Path, megabytes: int) -> Iterator[Path]:
    """Mount a `megabytes` MB tmpfs at `mount` (created) for the block (needs root)."""
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable(f"cannot mount a {megabytes} MB tmpfs: "
                    f"{proc.stderr.strip() or proc.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
