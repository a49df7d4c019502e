"""Integrations with observability libraries; each needs its optional extra.

- :mod:`resync.instrumentation.otel` -- OpenTelemetry spans and histograms for
  every lease (``pip install 'resync[otel]'``).

Nothing is imported here, so ``import resync.instrumentation`` never needs an
extra.
"""
