"""pymysql's TLS "preferred" mode without a certificate store it never consults.

A DSN that asks for nothing about TLS gets pymysql's PREFERRED mode: TLS when the server
offers it, plain otherwise, and the server's certificate is not checked (no CA given:
`verify_mode` CERT_NONE, no host name check). pymysql builds that context with
`ssl.create_default_context()`, which loads the system's CA store first (20-40 ms of
CPU per connection, on the extraction thread before a poll's first query; an incremental
command's start-up paid it on every connection), and then switches verification off, so
the store is never read again.

`Connection` builds the same context without the store, once per process: the same
protocol floor and options (PROTOCOL_TLS_CLIENT's defaults), no verification (as
pymysql's), X509 strict checks off (as pymysql's), SSLKEYLOGFILE honoured (as
`create_default_context`). What the server sees and what a TLS-only server requires are
unchanged; any TLS option given to pymysql (ssl, ssl_ca, ...) takes pymysql's own path.
"""

from __future__ import annotations

import functools
import os
import ssl
import sys
from typing import Any

import pymysql


@functools.cache
def preferred_context() -> ssl.SSLContext:
    """The context of pymysql's PREFERRED mode, built once: it is never changed after,
    and a context may be shared by connections on any thread."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if sys.version_info >= (3, 13):  # create_default_context's flags from 3.13 on
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog
    return ctx


class Connection(pymysql.connections.Connection):
    """pymysql's connection; PREFERRED mode's context is `preferred_context()`."""

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        # {} is what pymysql passes for PREFERRED mode (no TLS option given); REQUIRED
        # mode passes the options or a context of the caller's
        if isinstance(sslp, dict) and not sslp:
            return preferred_context()
        made: ssl.SSLContext = super()._create_ssl_ctx(sslp)  # type: ignore[misc]  # no stub
        return made
