"""Start a throwaway ``rabbitmq-server`` for tests: its own node, ports, dirs and epmd.

Plain module (no pytest imports), used by the ``rabbitmq_server`` fixture in
``conftest.py`` and usable from a shell::

    from rabbitmqutil import find_rabbitmq, start_rabbitmq
    server = start_rabbitmq(find_rabbitmq(), Path("/tmp/rmq"))
    ...  # server.url == "amqp://guest:guest@127.0.0.1:PORT//"
    server.stop()

Everything the node needs lives under ``workdir``: mnesia (data), logs, an empty
config and an empty enabled-plugins file (no management plugin), and the
Erlang cookie in ``workdir/home/.erlang.cookie`` (mode 0400; ``HOME`` points
there). Three free loopback ports are picked: AMQP (``RABBITMQ_NODE_PORT``),
distribution (``RABBITMQ_DIST_PORT``) and epmd (``ERL_EPMD_PORT``), so the node
never touches the machine's epmd on 4369 nor another test run's node. Run as
root, the server runs as the ``rabbitmq`` user (``runuser``) and ``workdir`` is
chowned to it (so ``workdir`` must be reachable by that user: not under pytest's
0700 ``/tmp/pytest-of-root``; the fixture uses a ``mkdtemp`` of its own); otherwise it
runs as the current user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RabbitMQServer", "delete_queues", "find_rabbitmq", "start_rabbitmq"]

_LIBEXEC = Path("/usr/lib/rabbitmq/bin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_rabbitmq() -> Path | None:
    """Directory holding the real ``rabbitmq-server``/``rabbitmqctl`` scripts, or ``None``.

    Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that ``su``s to the rabbitmq
    user with a clean environment (losing the ``RABBITMQ_*`` variables), so the
    scripts behind it are used.
    """
    if (_LIBEXEC / "rabbitmq-server").exists():
        return _LIBEXEC
    found = shutil.which("rabbitmq-server")
    return Path(found).resolve().parent if found else None


@dataclass
class RabbitMQServer:
    bindir: Path
    workdir: Path
    node: str
    port: int
    dist_port: int
    epmd_port: int
    env: dict[str, str]
    user: str | None
    proc: subprocess.Popen[bytes]
    epmd: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _cmd(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bindir / tool), "-n", self.node, *args]
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", "env", *self._env_args(), *argv]
        return argv

    def _env_args(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.env.items()]

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE *args`` (as the server's user, with its environment)."""
        env = {**os.environ, **self.env}
        return subprocess.run(
            self._cmd("rabbitmqctl", *args), env=env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )

    def log(self) -> str:
        parts = []
        for path in sorted((self.workdir / "log").glob("*")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        out = self.workdir / "server.out"
        if out.exists():
            parts.append(f"--- server.out\n{out.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def accepts(self) -> bool:
        """The AMQP port accepts a connection and answers the protocol header."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(1) == b"\x01"  # connection.start frame type: method
        except OSError:
            return False

    def stop(self) -> None:
        """``rabbitmqctl stop``, then kill the process group (incl. the node's epmd)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.ctl("stop", timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=20)
        for proc in (self.proc, self.epmd):  # the node's process group, then its epmd's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=10)


def start_rabbitmq(bindir: Path, workdir: Path, timeout: float = 90) -> RabbitMQServer:
    """Start a node under ``workdir`` on free loopback ports; wait until AMQP answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    for sub in ("home", "mnesia", "log"):
        (workdir / sub).mkdir(exist_ok=True)
    (workdir / "enabled_plugins").write_text("[].\n")
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16))
    cookie.chmod(0o400)

    user: str | None = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("rabbitmq")
        except KeyError:
            entry = None
        if entry is not None:
            user = "rabbitmq"
            os.chmod(workdir, 0o755)
            for root, dirs, files in os.walk(workdir):
                for name in (*dirs, *files):
                    os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
            os.chown(workdir, entry.pw_uid, entry.pw_gid)

    last = ""
    for _attempt in range(3):  # a free port may be taken in between
        port, dist_port, epmd_port = _free_port(), _free_port(), _free_port()
        if len({port, dist_port, epmd_port}) < 3:
            continue
        (workdir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
        node = f"logkit-test-{uuid.uuid4().hex[:8]}@localhost"
        env = {
            "HOME": str(home),
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
            "RABBITMQ_LOGS": str(workdir / "log" / "node.log"),
        }
        prefix = [] if user is None else ["runuser", "-u", user, "--", "env", *[
            f"{k}={v}" for k, v in env.items()]]
        with open(workdir / "server.out", "ab") as out:
            # Our own epmd in the foreground (a child we can stop), started before the node:
            # left to itself the node starts `epmd -daemon`, which detaches and outlives it.
            epmd = subprocess.Popen(
                [*prefix, shutil.which("epmd") or "epmd", "-port", str(epmd_port),
                 "-address", "127.0.0.1"],
                cwd=workdir, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
            proc = subprocess.Popen(
                [*prefix, str(bindir / "rabbitmq-server")], cwd=workdir,
                env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        server = RabbitMQServer(bindir, workdir, node, port, dist_port, epmd_port, env, user,
                                proc, epmd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if server.accepts():
                return server
            time.sleep(0.25)
        last = f"exit code {proc.poll()}\n{server.log()}"
        server.stop()
    raise RuntimeError(f"could not start rabbitmq-server: {last}")


def delete_queues(url: str, queues: tuple[str, ...]) -> None:
    """Delete ``queues`` (those that exist) on the broker at ``url``: nothing left over."""
    from kombu import Connection

    with Connection(url, connect_timeout=10) as conn:
        for queue in queues:
            channel = conn.channel()
            try:
                channel.queue_delete(queue)
            except Exception:  # not there: the broker closed the channel
                pass
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
