"""The resource room: :class:`~.pool.ResourcePool` for things without a driver pool."""
