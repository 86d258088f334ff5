"""Keeping passwords out of text that leaves the process: logs, errors, metrics.

Two defences, because neither is enough alone:

- :func:`redact_url` masks the password of any ``scheme://user:password@host``
  written in a text, whoever wrote it (a driver's error message, a repr);
- :func:`redact` also replaces the known secrets themselves (the passwords of
  the configured URLs, raw and percent-encoded) wherever they appear, since a
  driver may quote a password without its URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

MASK: Final = "***"

# scheme://user:password@ -- the password is everything up to the last "@"
# before the host, and may itself hold ":" or an unencoded "@".
_URL_PASSWORD: Final = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s/]*)@(?=[^\s@/]*(?:[/\s?#]|$))"
)


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda match: f"{match['head']}{MASK}@", text)


def url_password(url: str) -> str | None:
    """The password in ``url`` (percent-decoded), or None when it has none."""
    try:
        password = urlsplit(url).password
    except ValueError:  # a port that is not a number: take the text as it is
        match = _URL_PASSWORD.search(url)
        password = match["password"] if match else None
    return unquote(password) if password else None


def secret_forms(secrets: Iterable[str | None]) -> list[str]:
    """Every spelling of each secret that may show up in text, longest first.

    A password ``p@ss`` is written ``p%40ss`` inside a URL; both must go.
    """
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms.update({secret, quote(secret, safe=""), quote(secret)})
    # Longest first, so that a secret containing another is replaced whole.
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with URL passwords and every form of ``secrets`` replaced by ``***``."""
    text = redact_url(text)
    for form in secret_forms(secrets):
        text = text.replace(form, MASK)
    return text


class RedactSecrets:
    """A structlog processor that redacts every string value of a log event.

    Install it last before the renderer, so that it sees what is written.
    """

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._secrets = secret_forms(secrets)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, self._secrets)
        if isinstance(value, Mapping):
            return {key: self._clean(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._clean(item) for item in value)
        if isinstance(value, BaseException):
            return redact(f"{type(value).__name__}: {value}", self._secrets)
        return value

    def __call__(
        self, _logger: object, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            event[key] = self._clean(value)
        return event
