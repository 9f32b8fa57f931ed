"""The landing store on an object store through the S3 API (AWS S3, MinIO, Ceph, R2, ...):
the scaled mode's landing, readable by workers on any host.

Built on pyarrow.fs.S3FileSystem (pyarrow is pinned already; its client does the signing,
retries and multipart uploads), not on a client of our own. An object is visible only
once its upload is complete: a small file is one PUT issued when the stream closes, a
big one a multipart upload that only CompleteMultipartUpload makes visible. So `write`
is atomic without a temp name and a rename (which S3 does not have), and a process killed
mid-write leaves nothing a reader can see (an unfinished multipart upload is invisible;
a bucket lifecycle rule `AbortIncompleteMultipartUpload` reclaims its parts).

Credentials come from the config (`landing.access_key` / `secret_key`, written as
`${VAR}` references) or, when those are not set, from the AWS default chain (the
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment variables, a profile, an instance
role). Either way the secret is registered with steadyflow.secrets, and every message this
module raises is scrubbed, so a key never reaches a log, the state store or a terminal.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from steadyflow import secrets
from steadyflow.errors import (
    AuthError,
    ConfigError,
    FatalError,
    LandedFileMissing,
    RetryableError,
)
from steadyflow.failpoints import failpoint
from steadyflow.ports import LandedFile

COPY_CHUNK = 8 << 20  # bytes per write when a staged file is uploaded
# what S3-compatible stores answer for a key or signature they refuse
_AUTH_ERRORS = ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "AccessDenied", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")


class ObjectStoreLanding:
    """Objects under `s3://bucket/prefix`; see the module docstring."""

    def __init__(self, url: str, endpoint: str | None = None, region: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None,
                 timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"landing.url {url!r} is not an s3://bucket/prefix URL")
        if (access_key is None) != (secret_key is None):
            raise ConfigError("landing: set both access_key and secret_key, or neither "
                              "(then the AWS environment variables or profile are used)")
        for secret in (secret_key, os.environ.get("AWS_SECRET_ACCESS_KEY"),
                       os.environ.get("AWS_SESSION_TOKEN")):
            secrets.register(secret)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._base = f"{self.bucket}/{self.prefix}".rstrip("/")
        self._fs = pafs.S3FileSystem(
            access_key=access_key, secret_key=secret_key, region=region,
            endpoint_override=endpoint, connect_timeout=min(timeout, 10.0),
            request_timeout=timeout,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))

    def _key(self, path: str) -> str:
        return f"{self._base}/{path}"

    def write(self, path: str, data: bytes | memoryview) -> None:
        try:
            out = self._fs.open_output_stream(self._key(path))
            half = len(data) // 2
            out.write(data[:half])
            failpoint("land.mid_write")
            out.write(data[half:])
            out.close()  # the PUT (or CompleteMultipartUpload): visible from here on
        except OSError as exc:
            raise self._error("write", path, exc) from None

    @contextmanager
    def staged(self, path: str) -> Iterator[Path]:
        handle, name = tempfile.mkstemp(prefix="steadyflow-stage-", suffix=".parquet")
        os.close(handle)
        local = Path(name)
        try:
            yield local
            size = local.stat().st_size
            out = self._fs.open_output_stream(self._key(path))
            with open(local, "rb") as fh:
                while chunk := fh.read(COPY_CHUNK):
                    out.write(chunk)
            out.close()
            landed = self._fs.get_file_info(self._key(path))
            if landed.size != size:  # a store that took part of it: never reference it
                raise RetryableError(
                    f"{self.where}/{path}: uploaded {landed.size} of {size} bytes",
                    stage="land")
        except OSError as exc:
            raise self._error("write", path, exc) from None
        finally:
            local.unlink(missing_ok=True)

    def read(self, path: str) -> bytes:
        try:
            with self._fs.open_input_stream(self._key(path)) as fh:
                return bytes(fh.read())
        except OSError as exc:
            raise self._error("read", path, exc) from None

    def open(self, path: str) -> pa.NativeFile:
        try:
            return self._fs.open_input_file(self._key(path))
        except OSError as exc:
            raise self._error("read", path, exc) from None

    def exists(self, path: str) -> bool:
        try:
            return self._fs.get_file_info(self._key(path)).type == pafs.FileType.File
        except OSError as exc:
            raise self._error("look up", path, exc) from None

    def list(self, prefix: str = "") -> Iterator[LandedFile]:
        top = f"{self._base}/{prefix}".rstrip("/") if prefix else self._base
        try:
            infos = self._fs.get_file_info(
                pafs.FileSelector(top, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise self._error("list", prefix, exc) from None
        cut = len(self._base) + 1
        for info in sorted(infos, key=lambda i: i.path):
            if info.type != pafs.FileType.File:
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            yield LandedFile(info.path[cut:], info.size or 0, mtime)

    def delete(self, path: str) -> None:
        try:
            self._fs.delete_file(self._key(path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._error("delete", path, exc) from None

    def sweep_temp(self) -> int:
        """Nothing to sweep: an unfinished upload is never visible (see the module doc)."""
        return 0

    def close(self) -> None:
        pass

    def _error(self, op: str, path: str, exc: OSError) -> FatalError | RetryableError:
        """The driver's error as ours, scrubbed: pyarrow's text quotes the AWS answer."""
        where = f"{self.where}/{path}"
        if isinstance(exc, FileNotFoundError):
            return LandedFileMissing(
                f"landed file missing: {where}", stage="land",
                hint="a file of a loaded batch is deleted by `steadyflow gc` once it is "
                     "older than landing.retention; otherwise re-extract the range")
        text = secrets.scrub(str(exc))
        if any(code in text for code in _AUTH_ERRORS):
            return AuthError(f"the landing store refused our credentials to {op} {where}: "
                             f"{text}", stage="land",
                             hint="check landing.access_key/secret_key (or the AWS_* "
                                  "environment variables) and the bucket policy")
        return RetryableError(f"cannot {op} {where}: {text}", stage="land",
                              hint="check landing.endpoint, the network and the bucket")
