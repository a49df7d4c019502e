#!/usr/bin/env bash
# Create the project's virtual environment with the given Python (>= 3.11).
# Usage: scripts/bootstrap-venv.sh PYTHON VENV_DIR
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if ! command -v "$python" >/dev/null 2>&1; then
    echo "resync: '$python' not found. Install Python 3.11 or newer, or run 'make PYTHON=/path/to/python3.11 ...'." >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "resync: $("$python" --version 2>&1) is too old; resync needs Python 3.11 or newer (make PYTHON=python3.12 ...)." >&2
    exit 1
fi
if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    # Debian/Ubuntu ship venv separately from the interpreter.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "resync: installing python3-venv with apt-get ..."
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$python" -m venv "$venv"
    else
        echo "resync: '$python -m venv' failed. Install the venv module (Debian/Ubuntu: sudo apt-get install python3-venv) and retry." >&2
        exit 1
    fi
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "resync: virtual environment ready in $venv"
