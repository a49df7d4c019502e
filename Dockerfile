# syntax=docker/dockerfile:1
#
# resync service image.
#   docker build -t resync:latest .
#   docker run --rm -p 8000:8000 resync:latest      # embedded SQLite, no other service
#
# Stage 1 builds the project wheel and installs it with its runtime
# dependencies into a virtualenv; stage 2 copies only that virtualenv, so the
# image carries no source tree, build backend or pip cache.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# pyproject.toml names README.md as the readme: hatchling fails without it.
COPY pyproject.toml README.md ./
COPY resync ./resync

# uvloop and h2 are optional extras; the service uses them when installed.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install "$(ls /wheels/resync-*.whl)[uvloop,http2]" \
    && python -c "import resync.settings"


FROM python:${PYTHON_VERSION}-slim AS runtime

# HOST defaults to 127.0.0.1 in Settings; a container must listen on all
# interfaces or nothing outside it (probes included) can reach the service.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000

# A numeric UID lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 resync \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin resync

COPY --from=builder /opt/venv /opt/venv

# Root-owned and read-only for the service user; Settings looks for .env here.
WORKDIR /app
USER 10001:10001

EXPOSE 8000

# Liveness only: /health/live does no I/O, so a slow database cannot get the
# container restarted. urllib raises on refusal and on any non-2xx answer; the
# empty ProxyHandler keeps an HTTP_PROXY in the environment out of the way.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/health/live' % os.environ.get('PORT', '8000'), timeout=3)"]

# Exec form: resync is PID 1 and receives SIGTERM itself, so it can drain.
CMD ["resync", "serve"]
