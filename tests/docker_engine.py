"""A Docker engine of the tests' own, and chatstore's image built on it.

The engine is a ``dockerd`` started here, with its own socket, exec root and
configuration, and no bridge network (``--bridge=none``, no iptables rules):
containers run on ``--network host`` only, since Docker's bridges use private
address ranges, which are off limits on the machines that run this suite. It
never touches another engine on the machine, and tests/services.py, which
looks for the default socket, never sees it.

No registry serves base images there either, so the base is built from
Debian: ``debootstrap --variant=minbase bookworm``, imported as
``local/bookworm``, then tests/images/python-base.Dockerfile adds Debian's
Python 3.11. The project's Dockerfile is built on that with ``--build-arg
PYTHON_IMAGE``. The engine's data root is kept in a cache directory
(``~/.cache/chatstore-tests/docker``), so the next run finds the base and the
layers built and only rebuilds what changed; delete the directory to start
from nothing.

What is missing (dockerd, debootstrap, root) or does not start fails the test
with the reason and the end of dockerd's log: it is never skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
PYTHON_BASE_DOCKERFILE: Final = ROOT / "tests" / "images" / "python-base.Dockerfile"
HOST_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")

BOOKWORM: Final = "local/bookworm"
PYTHON_BASE: Final = "local/python3-bookworm"
IMAGE: Final = "chatstore-test/chatstore:latest"
BUILD_STAGE: Final = "chatstore-test/build:latest"
LABEL: Final = "chatstore-tests"
"""Every container the tests start carries it, so leftovers of an interrupted run can go."""

# The flags that keep the engine off any network but the host's.
NO_BRIDGE: Final = ("--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false")
START_WITHIN_S: Final = 60
STOP_WITHIN_S: Final = 30
LOG_TAIL_LINES: Final = 30


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} could not be read)"
    return "\n".join(text.splitlines()[-lines:])


def _output_tail(result: subprocess.CompletedProcess[str], lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


def cache_directory() -> Path:
    """Where the engine's data root is kept from one run to the next."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatstore-tests" / "docker"


@dataclass
class DockerEngine:
    """A running dockerd of the tests' own, and its command line client."""

    cli: str  # the docker client's path
    socket: Path
    log: Path  # dockerd's log
    environment: dict[str, str]  # for the client: this engine, the classic builder

    def run(
        self,
        *args: str,
        timeout_s: float = 120,
        check: bool = True,
        stdin: int | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` on this engine; a failure fails the test with its output
        unless ``check`` is false."""
        result = subprocess.run(
            [self.cli, *args],
            env=self.environment,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"docker {' '.join(args[:3])} ... exited with {result.returncode}:\n"
                f"{_output_tail(result)}",
                pytrace=False,
            )
        return result

    def has_image(self, name: str) -> bool:
        return self.run("image", "inspect", name, check=False).returncode == 0

    def answers(self) -> bool:
        try:
            version = self.run(
                "version", "--format", "{{.Server.Version}}", timeout_s=10, check=False
            )
        except subprocess.TimeoutExpired:
            return False
        return version.returncode == 0


def _require(command: str, why: str) -> str:
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(
            f"{command} is not installed; {why} (Debian: apt-get install docker.io debootstrap, "
            "which scripts/test does when it runs as root)",
            pytrace=False,
        )
    return found


@contextlib.contextmanager
def _data_root(run_directory: Path) -> Iterator[Path]:
    """The cached data root, locked for this run; a private one under ``run_directory``
    when another run holds the cache (two engines must never share a data root)."""
    cache = cache_directory()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache.parent / "docker.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield run_directory / "data"  # built from nothing: slower, still correct
            return
        yield cache


@contextlib.contextmanager
def running_engine() -> Iterator[DockerEngine]:
    """Start a dockerd of our own; stop it by its pid on exit."""
    dockerd = _require("dockerd", "the image tests start a Docker engine of their own")
    cli = _require("docker", "the image tests drive the engine with the docker client")
    if os.geteuid() != 0:
        pytest.fail("the image tests start dockerd, which needs root", pytrace=False)
    # Short, so the sockets under it stay within the 108 bytes a unix socket path may have.
    run_directory = Path(tempfile.mkdtemp(prefix="chatstore-dockerd-"))
    try:
        with (
            _data_root(run_directory) as data_root,
            _started(dockerd, cli, run_directory, data_root) as engine,
        ):
            yield engine
    finally:
        _remove(run_directory)


def _remove(run_directory: Path) -> None:
    """The run's directory, once the mounts dockerd left in it are gone. Never
    deletes through a mount that would not go."""
    _unmount(run_directory)
    if _mounts_under(run_directory):
        pytest.fail(f"mounts left under {run_directory}; the directory is kept", pytrace=False)
    shutil.rmtree(run_directory)


def _unmount(directory: Path) -> None:
    """What a stopped dockerd leaves mounted at or under ``directory``: it binds
    the data root onto itself, and the host's network namespace at
    exec/netns/default, and keeps both after it exits."""
    for mount in sorted(_mounts_under(directory), reverse=True):
        subprocess.run(["umount", mount], capture_output=True, timeout=30, check=False)


@contextlib.contextmanager
def _started(
    dockerd: str, cli: str, run_directory: Path, data_root: Path
) -> Iterator[DockerEngine]:
    config = run_directory / "daemon.json"
    config.write_text("{}\n")  # not /etc/docker/daemon.json, whatever it says
    socket = run_directory / "docker.sock"
    log = run_directory / "dockerd.log"
    command = [
        dockerd,
        f"--config-file={config}",
        f"--data-root={data_root}",
        f"--exec-root={run_directory / 'exec'}",
        # Beside the data root: dockerd refuses to start while the pid in it runs,
        # so an engine left behind by a killed run is never joined by a second one.
        f"--pidfile={data_root.parent / 'dockerd.pid'}",
        f"--host=unix://{socket}",
        *NO_BRIDGE,
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    environment |= {
        "DOCKER_HOST": f"unix://{socket}",
        # The classic builder: dockerd 20.10 has it built in, and it needs no buildx.
        "DOCKER_BUILDKIT": "0",
        "DOCKER_CONFIG": str(run_directory / "client"),  # no user's credential helpers
    }
    engine = DockerEngine(cli, socket, log, environment)
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    owned = False
    try:
        deadline = time.monotonic() + START_WITHIN_S
        while not engine.answers():
            if process.poll() is not None:
                pytest.fail(
                    f"dockerd exited with {process.returncode} while starting; its log ends:\n"
                    f"{_tail(log)}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"dockerd did not answer on {socket} within {START_WITHIN_S} s; "
                    f"its log ends:\n{_tail(log)}",
                    pytrace=False,
                )
            time.sleep(0.2)
        owned = True  # the data root is this engine's, and so are its mounts
        _remove_leftover_containers(engine)
        yield engine
    finally:
        _stop(process)
        if owned:
            _unmount(data_root)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to our dockerd (it stops its containerd), SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _remove_leftover_containers(engine: DockerEngine) -> None:
    """Containers an interrupted run left in the cached data root (ours only: the
    engine is ours)."""
    listed = engine.run("ps", "--all", "--quiet", "--filter", f"label={LABEL}")
    leftovers = listed.stdout.split()
    if leftovers:
        engine.run("rm", "--force", *leftovers)


# --- images ----------------------------------------------------------------


def build_image(engine: DockerEngine) -> str:
    """chatstore's image from the checkout's Dockerfile, on the local Python base;
    returns its name."""
    started = time.monotonic()
    base = build_python_base(engine)
    based = time.monotonic()
    # The build stage gets a name of its own: the classic builder keeps a stage's
    # layers only as untagged images, which the prune below would take, and with
    # them the cached dependencies.
    for target, tag in (("build", BUILD_STAGE), ("runtime", IMAGE)):
        engine.run(
            "build",
            "--network=host",
            f"--build-arg=PYTHON_IMAGE={base}",
            f"--target={target}",
            f"--tag={tag}",
            str(ROOT),
            timeout_s=600,
        )
    # What earlier builds left untagged; the layers of these two stay cached.
    engine.run("image", "prune", "--force")
    print(  # shown with -s, or with a failure of the first test
        f"images: {base} in {based - started:.0f} s, {IMAGE} in {time.monotonic() - based:.0f} s"
    )
    return IMAGE


def build_python_base(engine: DockerEngine) -> str:
    """Debian's Python 3.11 on a debootstrapped bookworm; returns its name."""
    if not engine.has_image(BOOKWORM):
        started = time.monotonic()
        _import_bookworm(engine)
        elapsed = time.monotonic() - started
        print(f"images: {BOOKWORM} debootstrapped and imported in {elapsed:.0f} s")
    if not HOST_CA_BUNDLE.is_file():
        pytest.fail(f"{HOST_CA_BUNDLE} is missing: the base image copies the host's CA bundle")
    with tempfile.TemporaryDirectory(prefix="chatstore-base-") as context:
        shutil.copyfile(HOST_CA_BUNDLE, Path(context) / "ca-certificates.crt")
        engine.run(
            "build",
            "--network=host",
            f"--file={PYTHON_BASE_DOCKERFILE}",
            f"--tag={PYTHON_BASE}",
            context,
            timeout_s=600,
        )
    return PYTHON_BASE


def _import_bookworm(engine: DockerEngine) -> None:
    debootstrap = _require("debootstrap", "the image tests build their base image with it")
    # Removed only when debootstrap is done with it: a tree it left mounts in is kept.
    parent = Path(tempfile.mkdtemp(prefix="chatstore-rootfs-"))
    target = parent / "rootfs"
    result = subprocess.run(
        [debootstrap, "--variant=minbase", "bookworm", str(target)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"debootstrap exited with {result.returncode} (its tree is kept in {target}):\n"
            f"{_output_tail(result)}",
            pytrace=False,
        )
    if _mounts_under(target):
        pytest.fail(f"debootstrap left mounts under {target}; the tree is kept", pytrace=False)
    tar = subprocess.Popen(["tar", "-C", str(target), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        engine.run("import", "-", BOOKWORM, stdin=tar.stdout.fileno(), timeout_s=300)
    finally:
        tar.stdout.close()
        tar.wait()
    if tar.returncode != 0:
        pytest.fail(f"tar of the debootstrapped tree exited with {tar.returncode}", pytrace=False)
    shutil.rmtree(parent)


def _mounts_under(directory: Path) -> list[str]:
    """Mount points at ``directory`` or below it."""
    top = str(directory.resolve())
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.strip()]
    return [point for point in points if point == top or point.startswith(top + "/")]
