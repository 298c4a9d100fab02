# A Python 3.11 base built from Debian bookworm's packages, for machines where
# python:3.11-slim-bookworm cannot be pulled (tools/image/ensure-base.sh builds it FROM the local
# Debian base it imported from debootstrap). Debian's python3 is 3.11 in bookworm; `python` and
# `python -m venv` work as in the official image. Debian's pip refuses to install into the system
# Python (PEP 668); the project's Dockerfile installs only into a venv.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-pip python-is-python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python3"]
