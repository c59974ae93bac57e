#!/usr/bin/env bash
# Creates (or reuses) .venv, installs the pinned requirements (`setup.sh test` adds the test
# extras), then this repository as an editable package without its dependencies, so the pins
# hold and `import egodex_jax, tfds_builder, configs` works from any directory.
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
req=requirements.txt
[ "${1:-}" = "test" ] && req=requirements-test.txt
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
