# chatstore's image: `docker build -t chatstore .`, then `chatstore worker`
# (the default) or `chatstore migrate`. See docs/DEPLOYMENT.md.
#
# Two stages: the first downloads the dependencies as wheels, builds
# chatstore's wheel from the sources and installs that wheel file, with its
# dependencies, into a virtual environment (every dependency ships as a wheel,
# so no compiler is needed, but whatever a build would need stays in this
# stage); the second is the slim Python runtime plus that environment, run by
# an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/chatstore
WORKDIR /src
# The dependencies first, from pyproject.toml alone: this layer stays cached
# until they change, so a change to the sources rebuilds only the steps below.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/chatstore/bin/pip wheel --wheel-dir /dependencies --requirement /tmp/requirements.txt
# What the wheel is made of, and nothing else (.dockerignore keeps out the rest):
# alembic/ is the migrations, which the wheel carries as worker/migrations.
COPY README.md ./
COPY alembic ./alembic
COPY contracts ./contracts
COPY worker ./worker
# The wheel, not the source tree, is installed: the image runs exactly what
# tests/test_wheel.py installs and migrates with, and a file the wheel leaves
# out is missing here too. The venv's own pip builds it (in an isolated
# environment, so the build backend never enters /opt/chatstore), installs it
# with the dependencies its metadata names, found among the wheels downloaded
# above and nowhere else, and is then removed with setuptools: the runtime
# installs nothing.
RUN /opt/chatstore/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/chatstore/bin/pip install --no-compile --no-index --find-links /dependencies \
        /wheels/chatstore-*.whl \
    && /opt/chatstore/bin/pip uninstall --yes pip setuptools \
    && /opt/chatstore/bin/python -m compileall -q /opt/chatstore

FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric user, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 chatstore \
    && useradd --system --uid 10001 --gid chatstore --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin chatstore
COPY --from=build /opt/chatstore /opt/chatstore
ENV PATH=/opt/chatstore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 9100
# /healthz answers while the event loop runs (docs/DEPLOYMENT.md). The probe
# asks the port the worker listens on, CHATSTORE_HTTP_PORT (default 9100), so
# `-e CHATSTORE_HTTP_PORT=...` moves both; it asks loopback, which the default
# CHATSTORE_HTTP_HOST (0.0.0.0) serves. With CHATSTORE_HTTP_PORT=0 (no HTTP
# server) and for `chatstore migrate`, which serves no HTTP, there is nothing
# to probe: give the container `--no-healthcheck` (compose: healthcheck:
# disable: true).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('CHATSTORE_HTTP_PORT') or '9100'; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
# Exec form: chatstore is PID 1 and receives SIGTERM itself, which starts the drain.
ENTRYPOINT ["chatstore"]
CMD ["worker"]
