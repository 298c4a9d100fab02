# Images of the Fleet Protocol External Server and of its Kubernetes operator.
#
#   docker build --target server   -t fleet-external-server:0.1.0 .
#   docker build --target operator -t fleet-external-server-operator:0.1.0 .
#
# (`make image` builds both, with tools/image/build.sh.) Stages:
#   modules   compiles every lib/modules/<name>/ that has a Makefile (tools/image/build-modules.sh)
#             and adds the prebuilt *.so files of EXTRA_MODULES_DIR
#   wheel     a wheelhouse: every dependency pinned in tools/image/constraints.txt, then the
#             project's wheel (server + operator packages)
#   operator  slim Python runtime + the wheel with the `operator` extra; entrypoint external-server-operator
#   server    slim Python runtime + the wheel (no kopf) + the modules; entrypoint external-server
# Only the modules and wheel stages reach PyPI; the two images install from the wheelhouse with
# `pip --no-index`, so the same constraints give the same packages every time. (The server stage
# still installs its run-time C libraries with apt, from the base image's Debian sources.)
#
# Modules live at a fixed path, /opt/external-server/modules/ (MODULES_DIR below): an
# ExternalServer names them as `library: /opt/external-server/modules/libexample.so`.
# Bring your own prebuilt modules: drop the .so files into tools/image/extra-modules/, or point
#   --build-arg EXTRA_MODULES_DIR=<directory inside the build context>
# at them. A module with sources gets its own lib/modules/<name>/ with a Makefile instead.
#
# No registry? PYTHON_IMAGE can be any Debian bookworm image with Python 3.11, `python -m venv` and
# pip; tools/image/ensure-base.sh builds one from Debian's packages when python:3.11-slim-bookworm
# cannot be pulled (make image does this by itself).
#
# Extra trusted CAs (a TLS-intercepting or corporate proxy between the build and PyPI/apt): put the
# PEM files (*.crt or *.pem) into tools/image/extra-ca/, or point
#   --build-arg EXTRA_CA_DIR=<directory inside the build context>
# at them (`make image EXTRA_CA=/path/ca.pem` stages a file or directory for you). The modules and
# wheel stages add them to the system bundle (update-ca-certificates) and point pip and Python's ssl
# at it (PIP_CERT, SSL_CERT_FILE, REQUESTS_CA_BUNDLE). The server and operator images do not carry
# them: they are built FROM runtime, which never sees EXTRA_CA_DIR, and take their Python packages
# from the wheelhouse without network; the server stage's apt uses Debian's signed http mirror as
# the base image configures it. Give a running pod a private CA by mounting it.
#
# Both runtime images run as uid/gid 10001 (the operator's server pods set the same ids),
# write nothing outside /tmp (the root filesystem can be read-only) and log to stdout.
# tools/image_emulation.sh repeats these build steps without a container engine and
# tests/unit/test_dockerfile.py checks this file against the chart and the operator.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- modules: the C modules ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS modules
ARG EXTRA_CA_DIR=tools/image/extra-ca
COPY tools/image/trust-extra-ca.sh /usr/local/sbin/trust-extra-ca
COPY ${EXTRA_CA_DIR}/ /tmp/extra-ca/
RUN trust-extra-ca /tmp/extra-ca
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev make pkg-config libcurl4-openssl-dev libjansson-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY lib/ lib/
COPY tools/image/build-modules.sh tools/image/build-modules.sh
ARG EXTRA_MODULES_DIR=tools/image/extra-modules
COPY ${EXTRA_MODULES_DIR}/ /tmp/extra-modules/
RUN tools/image/build-modules.sh /out/modules /tmp/extra-modules

# --- wheel: the Python packages -----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ARG EXTRA_CA_DIR=tools/image/extra-ca
COPY tools/image/trust-extra-ca.sh /usr/local/sbin/trust-extra-ca
COPY ${EXTRA_CA_DIR}/ /tmp/extra-ca/
RUN trust-extra-ca /tmp/extra-ca
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The wheel carries one small C helper (server/external_server/native/wait_loop.c, built by setup.py).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies first (this layer is rebuilt only when the pins change): the pinned set of the
# server and of the `operator` extra (tools/image/gen-constraints.sh writes it from pyproject.toml).
COPY tools/image/constraints.txt tools/image/constraints.txt
RUN python -m pip wheel --wheel-dir /wheels --requirement tools/image/constraints.txt
COPY pyproject.toml setup.py README.md ./
COPY server/ server/
COPY operator/ operator/
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: what both images share -----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fleet-external-server" \
      org.opencontainers.image.description="Fleet Protocol External Server and its Kubernetes operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 fleet \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fleet \
 && python -m venv /opt/venv

# --- operator image ------------------------------------------------------------------------------
FROM runtime AS operator
COPY --from=wheel /wheels/ /tmp/wheels/
RUN set -e; wheel=$(ls /tmp/wheels/fleet_external_server-*.whl); \
    pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /tmp/wheels \
      "${wheel}[operator]"; \
    rm -rf /tmp/wheels
USER 10001:10001
# kopf's liveness endpoint (/healthz).
EXPOSE 8081
ENTRYPOINT ["external-server-operator"]

# --- server image (the default target) -------------------------------------------------------------
FROM runtime AS server
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libcurl4 libjansson4 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /wheels/ /tmp/wheels/
RUN set -e; pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /tmp/wheels \
      /tmp/wheels/fleet_external_server-*.whl; \
    rm -rf /tmp/wheels
ENV MODULES_DIR=/opt/external-server/modules
COPY --from=modules /out/modules/ /opt/external-server/modules/
WORKDIR /opt/external-server
USER 10001:10001
# /healthz /readyz /status /metrics
EXPOSE 8080
ENTRYPOINT ["external-server"]
# The config file path the operator mounts (a ConfigMap at /etc/external-server/config.json).
CMD ["-c", "/etc/external-server/config.json"]
