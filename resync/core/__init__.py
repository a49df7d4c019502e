"""Core of resync: errors, metrics, resilience and the pools."""
