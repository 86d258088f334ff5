"""The RabbitMQ nodes of one cluster, as a list of AMQP URLs, and the order to try them.

``amqp://u:p@node1:5672/chat,amqp://u:p@node2:5672/chat`` names a cluster
by its nodes. The worker (``CHATSTORE_AMQP_URL``) and :class:`~contracts.Publisher`
read the same list the same way:

- The URLs are separated by commas, each one starting with ``amqp://`` or
  ``amqps://`` (a comma inside a password stays part of the password).
- They must agree on everything but the host and port: scheme (TLS or not),
  user, password, vhost and query (the TLS files, heartbeat...). A list that
  mixes vhosts or users names two brokers, not one cluster.
- :class:`BrokerNodes` puts them in an order of its own per process, shuffled,
  so that many workers and publishers spread over the nodes, and hands them
  out in turn: after a node fails, the next one is tried.

Errors never quote a URL: it holds a password. They name the node by its
place in the list.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import yarl

VHOST_MAX_BYTES: Final = 127
"""AMQP 0-9-1 sends the vhost as a ``path``: a short string of at most 127 octets."""

# A comma starts the next node only where an AMQP URL starts after it.
_NODE_SEPARATOR: Final = re.compile(r",\s*(?=amqps?://)")


class BrokerURLError(ValueError):
    """The broker URL (list) cannot be used; the message is one line, without secrets."""


@dataclass(frozen=True)
class BrokerNode:
    """One node's URL and what the client will read from it."""

    url: str
    host: str
    port: int
    vhost: str

    @property
    def address(self) -> str:
        """``host:port``, as an operator knows the node: never its credentials."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_node(url: str) -> BrokerNode:
    """One node's URL, checked the way the client (aiormq, on yarl) will read it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in {"amqp", "amqps"}:
        raise BrokerURLError("must start with amqp:// or amqps://")
    # The host part ends at the first "/", "?" or "#" (RFC 3986, and yarl): an
    # "@" only after it means a user or password holding one of those, which
    # the client would read as host and path.
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" not in authority and "@" in rest[len(authority) :]:
        raise BrokerURLError(
            "is ambiguous: percent-encode '/', '?' and '#' in the user and password "
            "(%2F, %3F, %23), and '@' in the vhost (%40)"
        )
    try:
        parsed = yarl.URL(url)
        port = parsed.port or (5671 if scheme == "amqps" else 5672)
    except ValueError:
        raise BrokerURLError("has a port that is not a number from 0 to 65535") from None
    # aiormq's own reading of the vhost: the path without its "/", %2F decoded.
    vhost = "/" if parsed.path in ("", "/") else parsed.path[1:].replace("%2F", "/")
    if len(vhost.encode()) > VHOST_MAX_BYTES:
        raise BrokerURLError(
            f"names a vhost of {len(vhost.encode())} bytes; AMQP sends at most "
            f"{VHOST_MAX_BYTES} (rename the vhost)"
        )
    return BrokerNode(url, parsed.host or "localhost", port, vhost)


def _same_cluster(url: str) -> tuple[str, str | None, str | None, str, str]:
    """What every node's URL must share: all but host and port."""
    parsed = yarl.URL(url)
    return parsed.scheme, parsed.user, parsed.password, parsed.raw_path, parsed.raw_query_string


def parse_nodes(value: str | Sequence[str]) -> tuple[BrokerNode, ...]:
    """The nodes of a comma-separated URL list (or a sequence of URLs), checked."""
    if isinstance(value, str):
        # A trailing comma would otherwise end up in the last vhost's name.
        urls = _NODE_SEPARATOR.split(value.strip()) if not value.rstrip().endswith(",") else [""]
    else:
        urls = list(value)
    if not urls or not all(url.strip() for url in urls):
        raise BrokerURLError("is empty, or has an empty entry between commas")
    nodes: list[BrokerNode] = []
    for place, url in enumerate(urls, start=1):
        try:
            nodes.append(parse_node(url.strip()))
        except BrokerURLError as error:
            raise BrokerURLError(
                error.args[0] if len(urls) == 1 else f"URL {place}: {error}"
            ) from None
    first = _same_cluster(nodes[0].url)
    for place, node in enumerate(nodes[1:], start=2):
        if _same_cluster(node.url) != first:
            raise BrokerURLError(
                f"URL {place} differs from URL 1 in more than host and port: the nodes of "
                "one cluster share the scheme (amqp or amqps), user, password, vhost and "
                "parameters"
            )
    return tuple(nodes)


class BrokerNodes:
    """A cluster's nodes in this process's order, handed out in turn.

    The order is shuffled once, at construction, so that processes spread
    over the nodes; :meth:`next` then cycles through it, so each failure
    moves on to the next node and every node is tried before any is tried
    twice.
    """

    def __init__(self, value: str | Sequence[str], *, rng: random.Random | None = None) -> None:
        nodes = list(parse_nodes(value))
        (rng or random.Random()).shuffle(nodes)
        self.nodes: tuple[BrokerNode, ...] = tuple(nodes)
        self._turn = 0

    def next(self) -> BrokerNode:
        """The node to try now; the one after it next time."""
        node = self.nodes[self._turn % len(self.nodes)]
        self._turn += 1
        return node

    def __len__(self) -> int:
        return len(self.nodes)
