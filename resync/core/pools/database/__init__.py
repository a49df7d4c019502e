"""The database room: SQLAlchemy async pools (PostgreSQL through asyncpg, SQLite).

:mod:`.pool` is the pool, composed of the objects that own its state:
:mod:`.stock` (its idle and leased connections, each a :mod:`.record`),
:mod:`.release` (how a lease ends), :mod:`.replacement` (``drain()``, a
read-only server) and :mod:`.topology` (PgBouncer, :mod:`.replicas`,
:mod:`.credentials`); :mod:`.url`, :mod:`.engine`, :mod:`.errors` and
:mod:`.pgbouncer` are pure helpers. Imports SQLAlchemy when a module is loaded.
"""
