"""Shared helpers for resync's own test-suite (servers, ports, fakes)."""
