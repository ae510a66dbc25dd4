# syntax=docker/dockerfile:1
# migopt: one image for the controller (`migopt run`) and the node agent (`migopt agent`); see deploy/.
#
# Base: an exact Python release on Debian bookworm. Pin it by digest at release
# (python:3.11.13-slim-bookworm@sha256:...); the machine this file was written on cannot reach a registry to
# read the digest. Both stages must use the same base: the virtual environment's interpreter links to it.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build: install migopt and its dependencies into a virtual environment ------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/migopt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY solver ./solver
COPY nvidia_protocol ./nvidia_protocol
COPY optimizer ./optimizer
COPY kubefacade ./kubefacade
COPY simulations ./simulations
COPY migopt ./migopt
# Not editable: the package is copied into site-packages with its dependencies (all ship manylinux wheels, so no
# compiler is needed), and byte-compiled here because the runtime root filesystem is read-only.
RUN /opt/migopt/bin/pip install . \
    && /opt/migopt/bin/python -m compileall -q /opt/migopt

# ---- runtime -----------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# No setuid or setgid files: the node agent's container keeps SYS_ADMIN in its capability bounding set for the
# NVIDIA Container Toolkit (deploy/README.md), so nothing in the image may raise a process's privileges.
RUN find / -xdev -type f -perm /6000 -exec chmod a-s {} + \
    && groupadd --system --gid 65532 migopt \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin migopt
COPY --from=build /opt/migopt /opt/migopt
ENV PATH=/opt/migopt/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
LABEL org.opencontainers.image.title="migopt" \
      org.opencontainers.image.description="MIG geometry optimizer and autoscaler for Kubernetes GPU clusters" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# Numeric, so `runAsNonRoot` can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["migopt"]
CMD ["--help"]
