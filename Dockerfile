# syntax=docker/dockerfile:1
# One image for the whole project: `epp` (the endpoint picker, the default entry point), `vllm-sim`
# (simulated vLLM) and `epp-sidecar` (the P/D routing sidecar), all console scripts of the package.
#
#   docker build -t epp:0.1.0 .
#   docker build -t epp:0.1.0-nixl --build-arg WITH_NIXL=true .   # real NIXL for the sim's KV transfer
#
# Kubernetes: manifests/ run it as UID/GID 10001 with a read-only root filesystem and /tmp on an emptyDir.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
# optional NIXL (CPU, UCX) for vllm-sim's P/D KV transfer; without it the sim moves KV over HTTP
ARG WITH_NIXL=false
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# a C compiler for epp's own extension (epp/kvcache/_prefix.c, the prefix index's hot loops); every
# dependency ships wheels for CPython 3.12 (amd64, arm64). This stage is thrown away.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY epp ./epp
COPY vllm_sim ./vllm_sim
RUN pip install . \
 && python -c "import epp.kvcache._prefix" \
 && if [ "$WITH_NIXL" = "true" ]; then \
      pip install numpy && pip install --no-deps nixl==1.5.1 nixl-cu13==1.5.1; \
    fi \
 && python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="epp" \
      org.opencontainers.image.description="Python endpoint picker for the Gateway API Inference Extension, with a simulated vLLM" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# numeric user, so Kubernetes can verify runAsNonRoot
RUN groupadd --system --gid 10001 epp \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin epp
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf
USER 10001:10001
WORKDIR /tmp
# ext_proc, gRPC health, Prometheus metrics; KV events (precise prefix routing)
EXPOSE 9002 9003 9090 5557
ENTRYPOINT ["epp"]
