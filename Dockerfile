# Image serving the bundled default model with TorchServe, as `purifier serve` does.
#   docker build -t purifier .                                  # CPU: torch's CPU wheel, onnxruntime
#   docker build --build-arg VARIANT=gpu -t purifier:gpu .      # GPU: torch's CUDA wheel, onnxruntime-gpu
#   docker run --rm -p 127.0.0.1:8080:8080 purifier             # GPU: docker run --gpus all ... purifier:gpu
# Inside the container the inference port listens on 0.0.0.0 (the container's own network
# namespace); publish it on the host's loopback as above. Management stays on 127.0.0.1.
# The inference key (renewed before it expires): docker exec CONTAINER purifier serve --key
ARG VARIANT=cpu

FROM python:3.11-slim-bookworm AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's security updates move the JRE's version; pinning it would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 purifier
WORKDIR /app
COPY pyproject.toml README.md ./
COPY purifier ./purifier
COPY training ./training
COPY export ./export
COPY serving ./serving
COPY evaluation ./evaluation
COPY cli ./cli

# CPU: torch from PyTorch's CPU index (PyPI's Linux wheel bundles CUDA, gigabytes).
FROM base AS cpu
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps onnx2torch==1.5.15 \
 && rm -rf /app/*
ENV PURIFIER_RUNTIME=onnxruntime

# GPU: PyPI's CUDA build of torch, and onnxruntime-gpu in place of onnxruntime.
FROM base AS gpu
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps onnx2torch==1.5.15 \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir onnxruntime-gpu==1.31.1 \
 && rm -rf /app/*
ENV PURIFIER_RUNTIME=onnxruntime-cuda

# hadolint ignore=DL3006
FROM ${VARIANT}
USER 10001
ENV PURIFIER_SERVE_DIR=/home/purifier/serve
# 8080 inference, 8082 Prometheus metrics (8081 management and 8083 stay on the container's loopback)
EXPOSE 8080 8082
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s CMD ["purifier", "serve", "--status"]
# tini reaps children and forwards SIGTERM: `docker stop` drains in-flight requests, then exits 0
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["purifier", "serve", "--foreground", "--host", "0.0.0.0"]
