"""Throwaway ``pgbouncer`` processes for tests of PgBouncer pooling modes.

A ``pgbouncer`` on a free loopback port, in front of a PostgreSQL the test
names (the shared server by default), with its config, auth file, log and pid
file in a temporary directory; stopped and deleted on exit. Clients log in to
PgBouncer without a password (``auth_type = trust``; the auth file only lists
the user), and PgBouncer logs in to the server as that user.

    with PgBouncer(pool_mode="transaction", server_port=5432, database="test") as bouncer:
        url = bouncer.url()   # postgresql+asyncpg://postgres@127.0.0.1:<port>/test

``default_pool_size`` is kept small on purpose: with more client connections
than server connections, PgBouncer hands each transaction whichever server
connection is free, which is exactly what breaks session state such as named
prepared statements. PgBouncer refuses to run as root, so when the tests run
as root it switches to the ``postgres`` OS user (its ``-u`` option), in a
directory that user owns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.helpers.net import free_port, wait_for_port

__all__ = ["PgBouncer", "pgbouncer_binary"]

_OS_USER = "postgres"


def pgbouncer_binary() -> str | None:
    """Path of the ``pgbouncer`` executable (Debian puts it in /usr/sbin), or None."""
    found = shutil.which("pgbouncer")
    if found is None and Path("/usr/sbin/pgbouncer").exists():
        found = "/usr/sbin/pgbouncer"
    return found


class PgBouncer:
    """One ``pgbouncer`` child process on a fixed free port."""

    def __init__(
        self,
        *,
        pool_mode: str = "transaction",
        server_port: int = 5432,
        database: str = "test",
        user: str = "postgres",
        default_pool_size: int = 4,
        max_client_conn: int = 200,
        start_timeout: float = 15.0,
    ) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        self.binary = binary
        self.pool_mode = pool_mode
        self.server_port = server_port
        self.database = database
        self.user = user
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.start_timeout = start_timeout
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="resync-pgbouncer-"))
        self.log = self.root / "pgbouncer.log"
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, *, driver: str = "postgresql+asyncpg") -> str:
        """SQLAlchemy URL of the database behind this PgBouncer."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _write_config(self) -> Path:
        userlist = self.root / "userlist.txt"
        userlist.write_text(f'"{self.user}" ""\n')
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{self.database} = host=127.0.0.1 port={self.server_port} dbname={self.database}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {userlist}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.default_pool_size}\n"
            f"max_client_conn = {self.max_client_conn}\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
        )
        if os.geteuid() == 0:
            for path in (self.root, userlist, ini):
                shutil.chown(path, user=_OS_USER, group=_OS_USER)
        return ini

    def start(self) -> None:
        """Start PgBouncer in the foreground as a child process and wait for its port."""
        ini = self._write_config()
        command = [self.binary, str(ini)]
        if os.geteuid() == 0:
            # pgbouncer drops root itself; the child is then pgbouncer, so
            # terminate() and wait() reach (and reap) the server directly.
            command[1:1] = ["-u", _OS_USER]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(self.port, timeout=self.start_timeout)
        except TimeoutError:
            self.stop()
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pgbouncer did not start:\n{log[-2000:]}") from None

    def stop(self) -> None:
        """Stop PgBouncer (SIGTERM, then SIGKILL after 10 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> PgBouncer:
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
