"""The database room: SQLAlchemy async pools (PostgreSQL through asyncpg, SQLite).

:mod:`.pool` is the pool; :mod:`.stock` owns its idle and leased connections;
:mod:`.url`, :mod:`.errors`, :mod:`.credentials`, :mod:`.pgbouncer` and
:mod:`.replicas` are its extras. Imports SQLAlchemy when a module is loaded.
"""
