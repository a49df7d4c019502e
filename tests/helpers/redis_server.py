"""Throwaway ``redis-server`` processes for tests that must own the server.

Tests that stop and restart Redis, set a password or an ACL user, or speak TLS
must never do so on the shared server; they start one of these instead: a
``redis-server`` on a free loopback port, no persistence (``--save ""
--appendonly no``), its files in a temporary directory. It can be stopped and
started again on the same port (a server restart as clients see it).

    with RedisServer(tmp_path, password="pw") as server:
        url = server.url()          # redis://:pw@127.0.0.1:<port>/0
        server.stop(); server.start()
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.helpers.net import free_port, wait_for_port

__all__ = ["RedisServer", "TLSFiles", "make_self_signed_cert", "redis_server_available"]


def redis_server_available() -> bool:
    """Is a ``redis-server`` binary on PATH?"""
    return shutil.which("redis-server") is not None


@dataclass(frozen=True)
class TLSFiles:
    """A self-signed certificate for 127.0.0.1 (it is its own CA) and its key."""

    cert: Path
    key: Path


def make_self_signed_cert(directory: Path) -> TLSFiles:
    """Create a one-day self-signed certificate for IP 127.0.0.1 with ``openssl``."""
    cert, key = directory / "redis-cert.pem", directory / "redis-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return TLSFiles(cert=cert, key=key)


class RedisServer:
    """One ``redis-server`` child process on a fixed free port.

    ``password`` sets ``requirepass`` (the default user's password); ``tls``
    serves TLS only (plain port disabled); ``extra_args`` are passed as they are.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        password: str | None = None,
        tls: TLSFiles | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.password = password
        self.tls = tls
        self.extra_args = extra_args
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / f"redis-{self.port}.log"

    def _command(self) -> list[str]:
        cmd = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self._log),
            "--enable-debug-command",
            "yes",
        ]
        if self.tls is not None:
            cmd += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.cert),
                "--tls-auth-clients",
                "no",
            ]
        else:
            cmd += ["--port", str(self.port)]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        return cmd + list(self.extra_args)

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def url(self, db: int = 0, *, user: str | None = None, password: str | None = None) -> str:
        """Client URL: ``rediss://`` when TLS, with ``user:password@`` when given."""
        scheme = "rediss" if self.tls is not None else "redis"
        secret = self.password if password is None else password
        auth = ""
        if user is not None or secret is not None:
            auth = f"{user or ''}:{secret or ''}@"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (on the same port as before) and wait until it accepts."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(self.port, timeout=timeout)
        except TimeoutError:
            self.stop()
            log = self._log.read_text() if self._log.exists() else "(no log)"
            raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: no save, clients see their sockets closed)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
