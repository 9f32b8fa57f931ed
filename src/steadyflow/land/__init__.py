"""land stage.

    local.py         the landing store on a local (or shared POSIX) filesystem
    object_store.py  the landing store in an S3-compatible bucket
    parquet.py       what is landed: Parquet batches, their checksums and ids (pyarrow)

`open_landing` is here, not in parquet.py: a pipeline opens its store at start (a bad
landing setting is an error then), while the Parquet side, and pyarrow with it, is loaded
only once rows are landed or read (run/pipeline.py, #15).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from steadyflow.land.local import LocalLanding

if TYPE_CHECKING:
    from steadyflow.config import LandingConfig
    from steadyflow.ports import Landing


def open_landing(config: LandingConfig, base: Path) -> Landing:
    """The configured landing store: an object store for `url`, else the directory
    `path` (relative to `base`, the config file's folder)."""
    if config.url:
        from steadyflow.land.object_store import ObjectStoreLanding  # only when used

        return ObjectStoreLanding(config.url, endpoint=config.endpoint, region=config.region,
                                  access_key=config.access_key, secret_key=config.secret_key)
    path = Path(config.path)
    return LocalLanding(path if path.is_absolute() else base / path)
