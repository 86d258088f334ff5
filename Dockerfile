# chatstore's image: `docker build -t chatstore .`, then `chatstore worker`
# (the default) or `chatstore migrate`. See docs/DEPLOYMENT.md.
#
# Two stages: the first installs chatstore and its dependencies into a
# virtual environment (every dependency ships as a wheel, so no compiler is
# needed, but whatever a build would need stays in this stage); the second is
# the slim Python runtime plus that environment, run by an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/chatstore
WORKDIR /src
# What the package is made of, and nothing else (.dockerignore keeps out the rest).
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY worker ./worker
RUN /opt/chatstore/bin/pip install --no-compile . \
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
# /healthz answers while the event loop runs (docs/DEPLOYMENT.md); port 9100
# is CHATSTORE_HTTP_PORT's default. `chatstore migrate` serves no HTTP: give
# its container `--no-healthcheck` (compose: healthcheck: disable: true).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2)"]
# Exec form: chatstore is PID 1 and receives SIGTERM itself, which starts the drain.
ENTRYPOINT ["chatstore"]
CMD ["worker"]
