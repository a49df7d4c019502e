#!/usr/bin/env bash
# Tools `make bench` uses beside the Python packages of the `bench` extra.
#
# wrk drives the end-to-end service benchmark. Installed with apt-get when
# missing and running as root; otherwise the suite falls back to its own
# httpx load generator in a second process (benchmarks/loadgen.py), and this
# script only says so.
set -euo pipefail

say() { echo "bench-tools: $*"; }

if command -v wrk >/dev/null 2>&1; then
    say "wrk is $(command -v wrk)"
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing wrk with apt-get ..."
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; then
        say "wrk is $(command -v wrk)"
        exit 0
    fi
    say "apt-get could not install wrk"
fi
say "wrk not available: the service benchmark uses the httpx load generator instead"
