# A stand-in for python:3.11-slim-bookworm where no registry serves images:
# Debian's own Python 3.11 on a debootstrapped bookworm (imported as
# local/bookworm by tests/docker_engine.py), passed to the project's
# Dockerfile as PYTHON_IMAGE. The build context holds one file, the host's CA
# bundle: package downloads go through a TLS proxy that the host trusts, and
# a bare image does not.
FROM local/bookworm
ENV DEBIAN_FRONTEND=noninteractive
# python-is-python3 gives the `python` name the project's Dockerfile runs, as
# the official image has it; python3-venv gives venv its pip.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends \
        python3 python3-venv python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/host-ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt
