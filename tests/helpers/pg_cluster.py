"""Throwaway PostgreSQL clusters for tests that must own the server.

Tests that stop or restart PostgreSQL, or need password authentication, must
never touch the shared server; they start one of these instead: ``initdb`` in
a temporary directory, a ``postgres`` on a free loopback port (fsync off, no
Unix socket in a shared place), stopped and deleted on exit. It can be stopped
and started again on the same port -- a server restart as clients see it.

    with PgCluster(password="s3cret") as cluster:
        url = cluster.url()          # postgresql+asyncpg://postgres:s3cret@127.0.0.1:<port>/postgres
        cluster.restart()

PostgreSQL refuses to run as root, so when the tests run as root the server
runs as the ``postgres`` OS user (``runuser``), in a directory it owns.
Starting one takes about a second.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from tests.helpers.net import free_port, wait_for_port

__all__ = ["PgCluster", "TLSServer", "pg_bin_dir", "postgres_available"]

_OS_USER = "postgres"


def pg_bin_dir() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl`` (newest installed major), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def postgres_available() -> bool:
    """Can this machine start a throwaway cluster?"""
    return pg_bin_dir() is not None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", _OS_USER, "--", *command]
    return command


@dataclass(frozen=True)
class TLSServer:
    """Certificate and key the server presents; ``client_ca`` checks client certificates."""

    cert: Path
    key: Path
    client_ca: Path | None = None


class PgCluster:
    """One PostgreSQL cluster in a temporary directory, on a fixed free port.

    ``password`` switches TCP logins to scram-sha-256 with that password for
    the ``postgres`` role (local socket logins stay trusted). ``tls`` turns
    ``ssl=on`` with that certificate; ``hba`` lines go before initdb's in
    ``pg_hba.conf`` (e.g. ``hostssl all certuser 127.0.0.1/32 cert``).
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        start_timeout: float = 30.0,
        tls: TLSServer | None = None,
        hba: tuple[str, ...] = (),
    ) -> None:
        bindir = pg_bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bindir = bindir
        self.password = password
        self.start_timeout = start_timeout
        self.tls = tls
        self.hba = hba
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="resync-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._initialized = False
        self.running = False

    def url(
        self,
        *,
        database: str = "postgres",
        user: str = "postgres",
        password: str | None = None,
        driver: str = "postgresql+asyncpg",
    ) -> str:
        """SQLAlchemy URL of this cluster (``password`` defaults to the cluster's)."""
        secret = self.password if password is None else password
        auth = f"{user}:{quote(secret, safe='')}" if secret else user
        return f"{driver}://{auth}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            _as_server_user([str(self.bindir / args[0]), *args[1:]]),
            capture_output=True,
            text=True,
            timeout=self.start_timeout,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log[-2000:]}"
            )

    def _initdb(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, user=_OS_USER, group=_OS_USER)
        args = ["initdb", "-D", str(self.data), "-U", "postgres", "-N", "--auth-local=trust"]
        if self.password:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, user=_OS_USER, group=_OS_USER)
            args += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            args += ["--auth-host=trust"]
        self._run(*args)
        if self.hba:  # first match wins: these lines go before initdb's
            hba = self.data / "pg_hba.conf"
            hba.write_text("\n".join(self.hba) + "\n" + hba.read_text())
        self._initialized = True

    def start(self) -> None:
        """Start the server (creating the cluster the first time) and wait for it."""
        if not self._initialized:
            self._initdb()
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        if self.tls is not None:
            options += self._tls_options(self.tls)
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.running = True
        wait_for_port(self.port, timeout=self.start_timeout)

    def _tls_options(self, tls: TLSServer) -> str:
        # The server reads its key only if the server's OS user owns it, mode 0600.
        files = {"ssl_cert_file": tls.cert, "ssl_key_file": tls.key, "ssl_ca_file": tls.client_ca}
        options = " -c ssl=on"
        for setting, source in files.items():
            if source is None:
                continue
            target = self.root / f"{setting}.pem"
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(target, user=_OS_USER, group=_OS_USER)
            options += f" -c {setting}={target}"
        return options

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends sessions cleanly, ``immediate`` is a crash."""
        if self.running:
            self.running = False
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port."""
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server (as a crash: nothing to keep) and delete its files."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()
