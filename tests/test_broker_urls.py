"""A RabbitMQ cluster named by its nodes' URLs: parsing, agreement, order, and errors
without passwords (contracts.brokers, and CHATSTORE_AMQP_URL through the settings)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from contracts.brokers import BrokerNodes, BrokerURLError, parse_nodes
from worker.settings import load_settings
from worker.unavailable import rabbitmq_at

CLUSTER = (
    "amqp://chat:s3cret@10.0.0.1:5672/chat,"
    "amqp://chat:s3cret@node-2.example:5673/chat, "
    "amqp://chat:s3cret@[::1]:5674/chat"
)


def test_a_list_is_split_at_each_url_and_read_as_the_client_reads_it() -> None:
    nodes = parse_nodes(CLUSTER)

    assert [(n.host, n.port, n.vhost) for n in nodes] == [
        ("10.0.0.1", 5672, "chat"),
        ("node-2.example", 5673, "chat"),
        ("::1", 5674, "chat"),
    ]
    assert [n.address for n in nodes] == ["10.0.0.1:5672", "node-2.example:5673", "[::1]:5674"]


def test_a_comma_in_a_password_stays_in_the_password() -> None:
    nodes = parse_nodes("amqp://u:a,b@h1/v,amqp://u:a,b@h2/v")

    assert [n.host for n in nodes] == ["h1", "h2"]
    assert nodes[0].url == "amqp://u:a,b@h1/v"


@pytest.mark.parametrize(
    ("second", "why"),
    [
        ("amqp://chat:s3cret@h2:5672/other", "vhost"),
        ("amqp://root:s3cret@h2:5672/chat", "user"),
        ("amqp://chat:other@h2:5672/chat", "password"),
        ("amqps://chat:s3cret@h2:5671/chat", "TLS"),
        ("amqp://chat:s3cret@h2:5672/chat?heartbeat=5", "parameters"),
    ],
)
def test_nodes_that_disagree_on_more_than_host_and_port_are_refused(second: str, why: str) -> None:
    with pytest.raises(BrokerURLError, match="URL 2 differs from URL 1") as refused:
        parse_nodes(f"amqp://chat:s3cret@h1:5672/chat,{second}")

    assert "s3cret" not in str(refused.value), why
    assert "other" not in str(refused.value), why


def test_an_error_names_the_node_by_its_place_never_by_its_url() -> None:
    with pytest.raises(BrokerURLError) as refused:
        parse_nodes("amqp://chat:s3cret@h1:5672/chat,amqp://chat:s3cret@h2:99999/chat")

    assert str(refused.value) == "URL 2: has a port that is not a number from 0 to 65535"


@pytest.mark.parametrize(
    "vhost",
    ["v" * 128, "é" * 64],  # 128 bytes either way; AMQP counts octets
)
def test_a_vhost_over_127_bytes_is_refused_before_connecting(vhost: str) -> None:
    with pytest.raises(BrokerURLError, match="vhost of 128 bytes; AMQP sends at most 127"):
        parse_nodes(f"amqp://guest:guest@localhost/{vhost}")

    assert parse_nodes(f"amqp://guest:guest@localhost/{'v' * 127}")[0].vhost == "v" * 127


def test_each_process_shuffles_the_nodes_and_then_takes_them_in_turn() -> None:
    nodes = BrokerNodes(CLUSTER, rng=random.Random(7))
    order = [nodes.next().port for _ in range(6)]

    assert sorted(order[:3]) == [5672, 5673, 5674]  # every node once...
    assert order[3:] == order[:3]  # ...before any twice, in the same order
    # Over many processes, each node comes first about as often as the others.
    firsts = Counter(
        BrokerNodes(CLUSTER, rng=random.Random(seed)).next().port for seed in range(300)
    )
    assert set(firsts) == {5672, 5673, 5674}
    assert min(firsts.values()) > 60


def test_the_settings_take_a_list_and_name_every_node_in_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATSTORE_AMQP_URL", CLUSTER)
    settings = load_settings()

    assert len(settings.amqp_urls) == 3
    assert "s3cret" in settings.secrets()
    assert rabbitmq_at(settings.amqp_url) == (
        "RabbitMQ at 10.0.0.1:5672, node-2.example:5673, [::1]:5674/chat"
    )
    assert "s3cret" not in repr(settings)


def test_the_tls_files_go_into_every_nodes_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    ca = tmp_path / "ca.pem"  # type: ignore[operator]
    ca.write_text("not read here")
    monkeypatch.setenv("CHATSTORE_AMQP_URL", "amqps://u:p@h1:5671/v,amqps://u:p@h2:5671/v")
    monkeypatch.setenv("CHATSTORE_AMQP_CAFILE", str(ca))

    urls = load_settings().amqp_urls

    assert [u.split("?", 1)[1] for u in urls] == [f"cafile={ca}", f"cafile={ca}"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "amqp://guest:pw1@127.0.0.1:5672/,amqp://guest:pw2@127.0.0.1:5673/",
            "CHATSTORE_AMQP_URL: URL 2 differs from URL 1 in more than host and port",
        ),
        (
            f"amqp://guest:pw1@127.0.0.1:5672/{'x' * 200}",
            "CHATSTORE_AMQP_URL: names a vhost of 200 bytes; AMQP sends at most 127",
        ),
        ("amqp://guest:pw1@127.0.0.1:5672/,", "CHATSTORE_AMQP_URL: is empty, or has an empty"),
    ],
)
def test_a_bad_list_is_one_line_and_exit_2_without_any_password(value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "worker"],
        env={"CHATSTORE_AMQP_URL": value, "CHATSTORE_HTTP_PORT": "0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"chatstore: {message}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "pw1" not in result.stderr
    assert "pw2" not in result.stderr


def test_the_publisher_refuses_a_bad_list_at_once() -> None:
    from contracts import Publisher

    with pytest.raises(BrokerURLError, match="URL 2 differs"):
        Publisher("amqp://u:p@h1/v,amqp://u:p@h2/w")


def test_a_sandbox_vhost_applies_to_every_node_of_a_list() -> None:
    from worker.tools.sandbox import with_vhost

    url, user = with_vhost("amqp://chat:pw@h1:5672/chat,amqp://chat:pw@h2:5673/chat", "bench x")

    assert user == "chat"
    assert [(n.host, n.vhost) for n in parse_nodes(url)] == [("h1", "bench x"), ("h2", "bench x")]
