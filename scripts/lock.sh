#!/usr/bin/env bash
# `make lock`: pin every dependency, with the SHA-256 of each of its files, in two locks:
#   requirements.lock      what the service and the offline workflow need (pyproject.toml's
#                          dependencies, and setuptools for the editable install); the
#                          image installs this one alone, with --require-hashes;
#   requirements-dev.lock  that plus the test and lint tools (the `dev` extra), at the same
#                          versions (the runtime lock constrains it).
# Resolved by uv (pinned here, fetched from PyPI into the cache on first use) for CPython
# 3.11 on x86-64 Linux. Versions already pinned stay as they are unless pyproject.toml's
# ranges exclude them: delete a line to let it move.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
CACHE="${DFM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/deepfake-monitor}"
tool="$CACHE/uv-$UV_VERSION"
if [ ! -x "$tool/bin/uv" ]; then
  echo "lock: fetching uv $UV_VERSION into $tool" >&2
  python3 -m pip install -q --target "$tool" "uv==$UV_VERSION"
fi
compile() {
  echo "setuptools>=68" | "$tool/bin/uv" pip compile pyproject.toml - --quiet --generate-hashes \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "make lock" "$@"
}
compile -o requirements.lock
compile --extra dev -c requirements.lock -o requirements-dev.lock
echo "lock: $(grep -c '==' requirements.lock) runtime pins in requirements.lock," \
  "$(grep -c '==' requirements-dev.lock) with the dev tools in requirements-dev.lock" >&2
