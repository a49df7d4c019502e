"""Throwaway PostgreSQL streaming replicas for tests of read replicas and failover.

A :class:`PgStandby` is a :class:`~tests.helpers.pg_cluster.PgCluster` made by
``pg_basebackup -R`` from a running throwaway primary instead of ``initdb``:
a hot standby on its own free loopback port, streaming WAL from the primary
(``standby.signal`` and ``primary_conninfo`` written by ``-R``). It can be
stopped and started like any cluster, and :meth:`PgStandby.promote` turns it
into a primary (a failover).

    with PgCluster() as primary, PgStandby(primary) as standby:
        standby.url()      # read-only: pg_is_in_recovery() is true
        standby.promote()  # now it takes writes

The primary must accept replication connections from 127.0.0.1 without a
password, which a ``PgCluster()`` without ``password`` does (initdb's
``--auth-host=trust`` covers replication too).
"""

from __future__ import annotations

import os
import shutil

from tests.helpers.pg_cluster import PgCluster

__all__ = ["PgStandby"]


class PgStandby(PgCluster):
    """A hot standby of ``primary``, cloned at first start."""

    def __init__(self, primary: PgCluster, *, start_timeout: float = 60.0) -> None:
        if primary.password:
            raise ValueError("PgStandby needs a primary without a password (trusted replication)")
        super().__init__(start_timeout=start_timeout)
        self.primary = primary

    def _initdb(self) -> None:
        # Named after the step it replaces in PgCluster.start(): the data
        # directory comes from the primary instead of from initdb.
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres", group="postgres")
        self._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            "postgres",
            "-D",
            str(self.data),
            "-R",  # standby.signal + primary_conninfo
            "-X",
            "stream",
            "-c",
            "fast",
        )
        self._initialized = True

    def promote(self) -> None:
        """Promote this standby to a primary and wait until it takes writes."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")
