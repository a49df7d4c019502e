"""Runnable examples of resync (``python -m examples.<name>`` from the repository root)."""
