"""The manager's parts: pool specs from settings, TLS options, health monitor, budget.

The manager itself stays at :mod:`resync.core.pools.pool_manager` (a seed path).
"""
