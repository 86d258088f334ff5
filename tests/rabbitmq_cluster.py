"""A three-node RabbitMQ cluster of the tests' own, for failover tests.

The nodes run on this machine from Debian's package, next to the system node
(``rabbit@localhost``, 5672), which they leave alone: each node has its own
name, its own ports (checked free first, below the kernel's ephemeral range
so a client socket cannot take a port a restarted node needs) and its own
directories in a temporary directory. They run as the rabbitmq user with
``HOME=/var/lib/rabbitmq``, whose Erlang cookie the nodes and the CLI share.
Node 1 boots alone, then nodes 2 and 3 boot and join it by peer discovery
(``classic_config``): what ``join_cluster`` does, in half the time.

Nodes are numbered 1 to 3, as in their names. Each server is a child process
of the test run (``rabbitmq-server`` in the foreground): a node that cannot
start fails the wait at once with its log, instead of running out a timeout.
A node is killed or stopped by its own OS pid or node name, never by a pattern.

The fixture ``rabbit_cluster`` is session-scoped: import it into one
conftest so that every module shares one cluster (each module that imports
it itself gets a cluster of its own). Tests make a vhost each
(:meth:`RabbitCluster.vhost`), and leave every node running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest

from worker.tools import subprocesses

__all__ = ["ClusterError", "Node", "NodeExitedError", "RabbitCluster", "rabbit_cluster"]

RABBITMQ_BIN: Final = Path("/usr/lib/rabbitmq/bin")  # the real scripts, not Debian's su wrappers
RABBITMQ_USER: Final = "rabbitmq"
RABBITMQ_HOME: Final = "/var/lib/rabbitmq"  # holds the Erlang cookie
SIZE: Final = 3
# Ports the system node uses, which a cluster node must never take.
SYSTEM_PORTS: Final = frozenset({4369, 5672, 15672, 15692, 25672, 35672})
# Below Linux's ephemeral range (32768-60999): clients' sockets never take these.
PORT_RANGE: Final = range(21000, 32000)
BOOT_TIMEOUT_S: Final = 120.0  # one node boots in ~15 s here, three at once in ~25 s
CTL_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.5


class ClusterError(AssertionError):
    """The cluster could not do what a test asked; the message holds the node's log."""


class NodeExitedError(ClusterError):
    """A node's server exited while it booted: a quick failure, worth one more launch."""


@dataclass
class Node:
    """One node: where it listens and where its files are."""

    index: int
    name: str  # e.g. chatstore-3f2a1b-1@localhost
    amqp_port: int
    dist_port: int
    management_port: int
    prometheus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    os_pid: int | None = None  # the Erlang VM's own pid, read from the node

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / f"{self.name}.log"

    @property
    def console_file(self) -> Path:
        return self.directory / "console.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's log and of its console, for failure messages."""
        parts = []
        for path in (self.log_file, self.console_file):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as error:
                text = [f"({error.strerror})"]
            parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports, from a random place in PORT_RANGE, so
    two runs at once rarely try the same block."""
    starts = list(range(PORT_RANGE.start, PORT_RANGE.stop - count, count))
    random.shuffle(starts)
    for start in starts:
        block = range(start, start + count)
        if SYSTEM_PORTS.isdisjoint(block) and all(_port_free(port) for port in block):
            return start
    raise ClusterError(f"no {count} consecutive free ports in {PORT_RANGE}")


def _as_rabbitmq() -> dict[str, Any]:
    """The Popen arguments that run a child as the rabbitmq user, or why that is impossible."""
    try:
        import pwd

        rabbitmq = pwd.getpwnam(RABBITMQ_USER)
    except KeyError:
        raise ClusterError(
            f"no {RABBITMQ_USER} user: install Debian's rabbitmq-server package"
        ) from None
    if os.getuid() == rabbitmq.pw_uid:
        return {}
    if os.getuid() == 0:
        return {"user": rabbitmq.pw_uid, "group": rabbitmq.pw_gid, "extra_groups": []}
    raise ClusterError(f"the cluster's nodes run as {RABBITMQ_USER}: run the tests as root or it")


def _environment(**extra: str) -> dict[str, str]:
    # Nothing inherited but PATH: a RABBITMQ_* variable of the caller's must not
    # point a node at the system node's files.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": RABBITMQ_HOME,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        **extra,
    }


@dataclass
class RabbitCluster:
    """Three clustered nodes and what failover tests do with them."""

    root: Path
    nodes: list[Node]
    user: str = "guest"
    password: str = "guest"
    booted_in_s: float | None = None  # how long boot() took, for the CI budget
    _as_user: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, parent: Path | None = None) -> RabbitCluster:
        """A cluster not yet started: names, free ports and directories chosen."""
        for script in ("rabbitmq-server", "rabbitmqctl"):
            if not (RABBITMQ_BIN / script).exists():
                raise ClusterError(
                    f"{RABBITMQ_BIN / script} is missing: install Debian's rabbitmq-server"
                )
        as_user = _as_rabbitmq()
        root = Path(tempfile.mkdtemp(prefix="chatstore-cluster-", dir=parent))
        root.chmod(0o755)
        token = uuid.uuid4().hex[:6]
        base = _free_port_block(4 * SIZE)
        nodes = [
            Node(
                index=i,
                name=f"chatstore-{token}-{i}@localhost",
                amqp_port=base + i - 1,
                dist_port=base + SIZE + i - 1,
                management_port=base + 2 * SIZE + i - 1,
                prometheus_port=base + 3 * SIZE + i - 1,
                directory=root / f"n{i}",
            )
            for i in range(1, SIZE + 1)
        ]
        cluster = cls(root, nodes, _as_user=as_user)
        for node in nodes:  # after cls(): the config names node 1
            cluster._write_files(node)
        if as_user:
            shutil.chown(root, as_user["user"], as_user["group"])
            for path in root.rglob("*"):
                shutil.chown(path, as_user["user"], as_user["group"])
        return cluster

    def _write_files(self, node: Node) -> None:
        node.directory.mkdir()
        (node.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {node.management_port}\n"
            f"prometheus.tcp.ip = 127.0.0.1\n"
            f"prometheus.tcp.port = {node.prometheus_port}\n"
            # guest may connect from 127.0.0.1 (the default allows only localhost
            # by name, which the tests do not use).
            "loopback_users = none\n"
            # A blank node joins the first node at boot (a node with data rejoins
            # its own cluster and ignores this).
            "cluster_formation.peer_discovery_backend = classic_config\n"
            f"cluster_formation.classic_config.nodes.1 = {self.nodes[0].name}\n"
        )
        (node.directory / "enabled_plugins").write_text("[].\n")
        # An env file of its own, so /etc/rabbitmq/rabbitmq-env.conf (the system
        # node's NODENAME) is not read.
        (node.directory / "rabbitmq-env.conf").write_text("")

    # -- URLs -----------------------------------------------------------------

    def node(self, i: int) -> Node:
        if not 1 <= i <= SIZE:
            raise ValueError(f"nodes are numbered 1 to {SIZE}, not {i}")
        return self.nodes[i - 1]

    def amqp_url(self, i: int, vhost: str = "/") -> str:
        """The URL of node ``i`` on ``vhost``."""
        path = quote(vhost, safe="")
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.node(i).amqp_port}/{path}"

    def amqp_urls(self, vhost: str = "/") -> str:
        """Every node's URL on ``vhost``, comma-separated, node 1 first."""
        return ",".join(self.amqp_url(node.index, vhost) for node in self.nodes)

    def index_of_port(self, port: int) -> int:
        """The node whose AMQP port is ``port``."""
        for node in self.nodes:
            if node.amqp_port == port:
                return node.index
        raise ValueError(f"no node listens on {port}")

    def index_of_name(self, name: str) -> int:
        for node in self.nodes:
            if node.name == name:
                return node.index
        raise ClusterError(f"{name} is not a node of this cluster ({self.names()})")

    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    # -- the CLI --------------------------------------------------------------

    async def ctl(
        self, i: int, *args: str, tool: str = "rabbitmqctl", timeout_s: float = CTL_TIMEOUT_S
    ) -> str:
        """Run ``tool -n NODE args`` against node ``i``; its stdout, or ClusterError."""
        node = self.node(i)
        command = [str(RABBITMQ_BIN / tool), "--quiet", "-n", node.name, *args]
        try:
            done = await subprocesses.run(
                command, timeout_s=timeout_s, cwd=self.root, env=_environment(), **self._as_user
            )
        except TimeoutError:
            raise ClusterError(
                f"{tool} {' '.join(args)} on {node.name}: no answer in {timeout_s:g} s\n"
                + node.log_tail()
            ) from None
        if done.returncode != 0:
            raise ClusterError(
                f"{tool} {' '.join(args)} on {node.name} exited {done.returncode}: "
                f"{(done.stdout + done.stderr).decode(errors='replace').strip()[-2000:]}"
            )
        return done.stdout.decode()

    async def ctl_json(self, i: int, *args: str, tool: str = "rabbitmqctl") -> Any:
        return json.loads(await self.ctl(i, *args, "--formatter", "json", tool=tool))

    def running(self) -> list[int]:
        """Nodes whose server process runs (started by this cluster, not exited)."""
        return [node.index for node in self.nodes if not node.exited()]

    def _via(self, via: int | None) -> int:
        if via is not None:
            return via
        running = self.running()
        if not running:
            raise ClusterError("no node of the cluster is running")
        return running[0]

    # -- starting and stopping ------------------------------------------------

    async def boot(self) -> None:
        """Boot all three nodes as one cluster; fails with the logs if they cannot.

        Node 1 boots first; nodes 2 and 3 then boot at once and join it by
        themselves (peer discovery from the config file, which only a blank node
        runs). That takes half the time of booting three and then running
        stop_app, reset, join_cluster and start_app on two of them.
        """
        began = time.monotonic()
        for node in self.nodes:
            for port in (node.amqp_port, node.dist_port):
                if not _port_free(port):
                    raise ClusterError(f"port {port} for {node.name} is taken")
        first, *others = self.nodes
        self._launch(first)
        await self._wait_booted(first)
        for node in others:
            self._launch(node)
        await asyncio.gather(*(self._wait_booted(node) for node in others))
        await self.wait_running(list(range(1, SIZE + 1)))
        self.booted_in_s = time.monotonic() - began

    def _launch(self, node: Node) -> None:
        d = node.directory
        environment = _environment(
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            # Inter-node traffic on loopback only, like the AMQP listener.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        with node.console_file.open("ab") as console:
            node.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                cwd=d,  # crash dumps land here
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the test run reaches the run only
                **self._as_user,
            )
        node.os_pid = None

    async def _wait_booted(self, node: Node, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Wait until the node's app runs; at once ClusterError if its process ends."""
        pid_file = str(node.directory / "pid")
        waiting = asyncio.ensure_future(
            self.ctl(
                node.index,
                "wait",
                pid_file,
                "--timeout",
                str(int(timeout_s)),
                timeout_s=timeout_s + 10,
            )
        )
        try:
            while not waiting.done():
                if node.exited():
                    code = node.process.returncode if node.process else None
                    raise NodeExitedError(
                        f"{node.name} exited while booting (code {code})\n" + node.log_tail()
                    )
                await asyncio.wait({waiting}, timeout=POLL_S)
            try:
                waiting.result()
            except ClusterError as error:
                raise ClusterError(f"{error}\n{node.log_tail()}") from None
        finally:
            # Awaited, so that its rabbitmqctl is killed and reaped before this returns.
            waiting.cancel()
            await asyncio.wait({waiting})
            if not waiting.cancelled():
                waiting.exception()  # retrieved: it was raised above, or this one failed first
        node.os_pid = await self.os_pid(node.index)

    async def os_pid(self, i: int) -> int:
        """The OS pid of node ``i``'s Erlang VM, asked of the node itself."""
        answer = await self.ctl(i, "eval", "os:getpid().")
        return int(answer.strip().strip('"'))

    async def running_nodes(self, via: int | None = None) -> list[int]:
        """The nodes that node ``via`` sees running in its cluster."""
        status = await self.ctl_json(self._via(via), "cluster_status")
        return sorted(self.index_of_name(name) for name in status["running_nodes"])

    async def wait_running(
        self, expected: list[int], via: int | None = None, timeout_s: float = BOOT_TIMEOUT_S
    ) -> None:
        """Wait until node ``via`` sees exactly ``expected`` running."""
        seen: list[int] | str = "nothing yet"

        async def holds() -> bool:
            nonlocal seen
            try:
                seen = await self.running_nodes(via)
            except ClusterError as error:
                seen = str(error)
                return False
            return seen == sorted(expected)

        await self._wait(holds, timeout_s, lambda: f"running nodes {expected} (saw {seen})")

    async def _wait(self, holds: Any, timeout_s: float, what: Any) -> None:
        deadline = time.monotonic() + timeout_s
        while not await holds():
            if time.monotonic() > deadline:
                tails = "\n".join(node.log_tail(20) for node in self.nodes)
                raise ClusterError(f"timed out after {timeout_s:g} s waiting for {what()}\n{tails}")
            await asyncio.sleep(POLL_S)

    async def kill(self, i: int) -> None:
        """SIGKILL node ``i``'s Erlang VM by its own pid; returns once the others see it down."""
        node = self.node(i)
        # The pid the node gave at boot, if /proc still shows it as this node's VM
        # (saves a CLI call, ~2 s); else ask the node again.
        known = node.os_pid
        pid = known if known and _alive(known, node.name) else await self.os_pid(i)
        os.kill(pid, signal.SIGKILL)
        await self._wait_exited(node)
        await self.wait_running([j for j in self.running() if j != i])

    async def stop(self, i: int) -> None:
        """Stop node ``i`` gracefully (``rabbitmqctl stop``); returns once it has exited."""
        node = self.node(i)
        await self.ctl(i, "stop", timeout_s=STOP_TIMEOUT_S)
        await self._wait_exited(node)
        await self.wait_running([j for j in self.running() if j != i])

    async def start(self, i: int) -> None:
        """Start node ``i`` again on its own files; returns once the cluster runs it."""
        node = self.node(i)
        if not node.exited():
            raise ClusterError(f"{node.name} is still running")
        self._launch(node)
        try:
            await self._wait_booted(node)
        except NodeExitedError as first:
            # A node restarted right after it went down has once exited at boot
            # in CI, for a reason that run's report lost: a second launch tells a
            # passing hiccup from a broken node, and the first log is printed.
            print(
                f"{node.name} exited at its restart; launching it again:\n{first}", file=sys.stderr
            )
            await asyncio.sleep(1)
            self._launch(node)
            await self._wait_booted(node)
        await self.wait_running(sorted({*self.running(), i}))

    async def _wait_exited(self, node: Node, timeout_s: float = STOP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not node.exited():
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{node.name} still runs after {timeout_s:g} s\n{node.log_tail()}"
                )
            await asyncio.sleep(0.05)
        # The server script outlives the VM by a moment at most; the VM itself must be gone.
        if node.os_pid is not None:
            while _alive(node.os_pid, node.name):
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node.name}'s VM {node.os_pid} outlives its script")
                await asyncio.sleep(0.05)
        node.os_pid = None

    async def close(self) -> None:
        """Stop every node by name, kill by own pid what does not stop, remove the files."""
        for node in self.nodes:
            if node.exited() and not (node.os_pid and _alive(node.os_pid, node.name)):
                continue
            with contextlib.suppress(ClusterError):
                await self.ctl(node.index, "stop", timeout_s=STOP_TIMEOUT_S)
            with contextlib.suppress(ClusterError):
                await self._wait_exited(node, timeout_s=10)
            if node.os_pid and _alive(node.os_pid, node.name):
                os.kill(node.os_pid, signal.SIGKILL)
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- vhosts and queues ----------------------------------------------------

    @contextlib.asynccontextmanager
    async def vhost(self, name: str | None = None) -> AsyncIterator[str]:
        """A vhost of the caller's own, open to guest; deleted on exit."""
        name = name or f"chatstore_test_{uuid.uuid4().hex[:12]}"
        await self.ctl(self._via(None), "add_vhost", name)
        try:
            await self.ctl(
                self._via(None), "set_permissions", "-p", name, self.user, ".*", ".*", ".*"
            )
            yield name
        finally:
            with contextlib.suppress(ClusterError):
                await self.ctl(self._via(None), "delete_vhost", name)

    async def queue_info(self, vhost: str, queue: str, via: int | None = None) -> dict[str, Any]:
        """``list_queues`` of one queue: type, leader, members, online, messages."""
        rows = await self.ctl_json(
            self._via(via),
            "list_queues",
            "-p",
            vhost,
            "name",
            "type",
            "leader",
            "members",
            "online",
            "messages",
        )
        for row in rows:
            if row["name"] == queue:
                return dict(row)
        raise ClusterError(f"no queue {queue!r} in vhost {vhost!r}: {rows}")

    async def leader_of(self, vhost: str, queue: str, via: int | None = None) -> int:
        """The node that leads quorum queue ``queue``."""
        return self.index_of_name(str((await self.queue_info(vhost, queue, via))["leader"]))

    async def members_of(self, vhost: str, queue: str, via: int | None = None) -> list[int]:
        info = await self.queue_info(vhost, queue, via)
        return sorted(self.index_of_name(name) for name in info["members"])

    async def raft_states(self, vhost: str, queue: str, via: int | None = None) -> dict[int, str]:
        """Each member's Raft state (leader, follower, noproc...), from ``quorum_status``."""
        rows = await self.ctl_json(
            self._via(via), "quorum_status", queue, "--vhost", vhost, tool="rabbitmq-queues"
        )
        return {self.index_of_name(row["Node Name"]): str(row["Raft State"]) for row in rows}

    async def wait_quorum(
        self,
        vhost: str,
        queue: str,
        members: int = SIZE,
        timeout_s: float = 60,
        via: int | None = None,
    ) -> int:
        """Wait until ``queue`` has ``members`` members, one leader and the rest followers,
        all online; returns the leader."""
        seen: object = "nothing yet"

        async def holds() -> bool:
            nonlocal seen
            try:
                states = await self.raft_states(vhost, queue, via)
            except ClusterError as error:
                seen = str(error)
                return False
            seen = states
            roles = sorted(states.values())
            return len(states) == members and roles == sorted(
                ["leader"] + ["follower"] * (members - 1)
            )

        await self._wait(holds, timeout_s, lambda: f"{queue} with {members} members ({seen})")
        return await self.leader_of(vhost, queue, via)

    async def wait_new_leader(
        self, vhost: str, queue: str, old: int, timeout_s: float = 60, via: int | None = None
    ) -> int:
        """Wait until a node other than ``old`` leads ``queue``; returns it."""
        leader: object = old

        async def holds() -> bool:
            nonlocal leader
            try:
                states = await self.raft_states(vhost, queue, via)
            except ClusterError as error:
                leader = str(error)
                return False
            leaders = [i for i, state in states.items() if state == "leader"]
            leader = leaders
            return len(leaders) == 1 and leaders[0] != old

        await self._wait(holds, timeout_s, lambda: f"a leader other than {old} ({leader})")
        return await self.leader_of(vhost, queue, via)

    async def node_of_connection(
        self,
        vhost: str,
        *,
        name: str | None = None,
        client_port: int | None = None,
        via: int | None = None,
    ) -> int:
        """The node a client connection is on, found by the name the client gave it
        (client property ``connection_name``) or by its local port."""
        if name is None and client_port is None:
            raise ValueError("give the connection's name or its client port")
        rows = await self.ctl_json(
            self._via(via), "list_connections", "name", "vhost", "peer_port", "client_properties"
        )
        for row in rows:
            if row["vhost"] != vhost:
                continue
            given = _client_property(row["client_properties"], "connection_name")
            if (name is not None and given == name) or (
                client_port is not None and row["peer_port"] == client_port
            ):
                # The broker names a connection "client:port -> server:port"; list_connections
                # has no node column, but each node has its own port.
                server_port = int(str(row["name"]).rsplit(":", 1)[1])
                return self.index_of_port(server_port)
        raise ClusterError(f"no connection {name or client_port} in vhost {vhost!r}: {rows}")


def _client_property(properties: Any, key: str) -> object:
    # The JSON formatter renders an AMQP table as a list of [key, type, value].
    if isinstance(properties, dict):
        return properties.get(key)
    for item in properties or []:
        if isinstance(item, list) and item and item[0] == key:
            return item[-1]
    return None


def _alive(pid: int, node_name: str) -> bool:
    """Whether ``pid`` is still the VM of ``node_name`` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return node_name.encode() in cmdline


def _booted() -> RabbitCluster:
    """A new cluster, booted; or, closed again, the error that stopped it."""
    cluster = RabbitCluster.create()
    try:
        asyncio.run(cluster.boot())
    except BaseException:
        asyncio.run(cluster.close())
        raise
    return cluster


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """Three clustered nodes, shared by the session; failing, never skipping, if they
    cannot start. Tests leave all three running."""
    try:
        cluster = _booted()
    except NodeExitedError as first:
        # Once, a CI run's first boot failed for a reason its report lost (see
        # worker.tools.subprocesses). A second cluster, on new names, ports and
        # files, tells a passing hiccup from a broken setup; the first failure
        # is printed with the test's output either way. Only a node that
        # exited: that fails in seconds, so two boots fit the test's timeout.
        print(f"the cluster's first boot failed; booting a new one:\n{first}", file=sys.stderr)
        cluster = _booted()
    try:
        yield cluster
    finally:
        asyncio.run(cluster.close())
