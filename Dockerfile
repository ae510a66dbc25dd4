# syntax=docker/dockerfile:1
# migopt's two images, from one source tree (see deploy/README.md, "Images"):
#   docker build --target controller -t <registry>/migopt:0.1.0 .        # `migopt run`: the solver stack included
#   docker build --target agent -t <registry>/migopt-agent:0.1.0 .       # `migopt agent`: no OR-Tools, pandas, numpy
# The controller is the last stage, so a plain `docker build .` builds it.
#
# Base: an exact Python release on Debian bookworm. Pin it by digest at release
# (python:3.11.13-slim-bookworm@sha256:...); the machine this file was written on cannot reach a registry to
# read the digest. Every stage must use the same base: the virtual environment's interpreter links to it.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- source: the package and an empty virtual environment ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS source
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

# ---- build-controller: migopt and all its dependencies ---------------------------------------------------------
# Not editable: the package is copied into site-packages with its dependencies (all ship manylinux wheels, so no
# compiler is needed), and byte-compiled here because the runtime root filesystem is read-only. No extras: the
# `plots` extra (matplotlib) is only for `migopt simulate --output-dir`. pip and setuptools are removed: nothing
# installs anything at run time.
FROM source AS build-controller
RUN /opt/migopt/bin/pip install . \
    && /opt/migopt/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/migopt/bin/python -m compileall -q /opt/migopt

# ---- build-agent: migopt without the planner's dependencies -----------------------------------------------------
# The node agent imports neither OR-Tools (which brings numpy and pandas) nor the Prometheus query client
# (tests/test_images.py runs the agent with those blocked). Its requirements are pyproject.toml's dependencies
# less AGENT_LEAVES_OUT, read here so that the list is never written twice.
FROM source AS build-agent
ARG AGENT_LEAVES_OUT="ortools prometheus-api-client"
RUN python -c 'import re, sys, tomllib; skip = set(sys.argv[1].split()); deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if re.sub(r"[-_.]+", "-", re.split(r"[^A-Za-z0-9._-]", d, maxsplit=1)[0]).lower() not in skip))' "$AGENT_LEAVES_OUT" > /tmp/agent-requirements.txt \
    && /opt/migopt/bin/pip install -r /tmp/agent-requirements.txt \
    && /opt/migopt/bin/pip install --no-deps . \
    && /opt/migopt/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/migopt/bin/python -m compileall -q /opt/migopt

# ---- runtime: what both images share ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# No setuid or setgid files: the node agent's container keeps SYS_ADMIN in its capability bounding set for the
# NVIDIA Container Toolkit (deploy/README.md), so nothing in the image may raise a process's privileges.
RUN find / -xdev -type f -perm /6000 -exec chmod a-s {} + \
    && groupadd --system --gid 65532 migopt \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin migopt
ENV PATH=/opt/migopt/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Numeric, so `runAsNonRoot` can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["migopt"]
CMD ["--help"]

# ---- agent: `migopt agent` on every MIG node (deploy/base/agent.yaml) -------------------------------------------
FROM runtime AS agent
COPY --from=build-agent /opt/migopt /opt/migopt
LABEL org.opencontainers.image.title="migopt-agent" \
      org.opencontainers.image.description="migopt node agent: publishes a node's MIG layout read through NVML" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

# ---- controller: `migopt run` (deploy/base/controller.yaml); the default target -----------------------------------
FROM runtime AS controller
COPY --from=build-controller /opt/migopt /opt/migopt
LABEL org.opencontainers.image.title="migopt" \
      org.opencontainers.image.description="MIG geometry optimizer and autoscaler for Kubernetes GPU clusters" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
