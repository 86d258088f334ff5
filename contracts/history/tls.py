"""libpq's TLS settings as asyncpg's ``ssl`` argument: one reading for readers and the worker.

asyncpg takes none of libpq's ``sslmode``, ``sslrootcert``, ``sslcert`` and
``sslkey`` as keywords, so they must leave the URL before SQLAlchemy passes
its parameters on. verify-ca and verify-full get an :class:`ssl.SSLContext`
that checks the server's certificate (and, for verify-full, its name);
require encrypts without checking, as libpq does.
"""

from __future__ import annotations

import ssl
from typing import Final

from sqlalchemy.engine import URL

LIBPQ_TLS: Final = ("sslmode", "sslrootcert", "sslcert", "sslkey")
"""libpq's TLS parameters of a URL."""
SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def ssl_argument(
    mode: str, rootcert: str = "", cert: str = "", key: str = ""
) -> ssl.SSLContext | str:
    """asyncpg's ``ssl`` argument for libpq's ``sslmode`` and certificate files.

    Raises :class:`ValueError` for a mode libpq does not know, and
    :class:`ssl.SSLError` or :class:`OSError` for files that cannot be loaded.
    """
    if mode not in SSL_MODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)}")
    if mode in ("disable", "allow", "prefer"):
        return mode  # asyncpg implements these the way libpq does
    context = ssl.create_default_context(cafile=rootcert or None)
    if cert:
        context.load_cert_chain(cert, key or None)
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        context.check_hostname = False  # the chain is checked, the name is not
    return context


def split_tls(url: URL) -> tuple[URL, ssl.SSLContext | str | None]:
    """``url`` without libpq's TLS parameters, and the ``ssl`` argument they ask for
    (None when the URL has none: asyncpg's default then applies)."""
    query = {name: url.query.get(name) for name in LIBPQ_TLS}
    if all(value is None for value in query.values()):
        return url, None
    texts = {name: value if isinstance(value, str) else "" for name, value in query.items()}
    argument = ssl_argument(
        texts["sslmode"] or "prefer", texts["sslrootcert"], texts["sslcert"], texts["sslkey"]
    )
    return url.difference_update_query(LIBPQ_TLS), argument
