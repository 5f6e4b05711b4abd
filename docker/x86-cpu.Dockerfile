# edgekd on an x86-64 CPU host: compress, verify and bench on ONNX Runtime and OpenVINO (CPU).
# Build from the repository root:
#   docker build -f docker/x86-cpu.Dockerfile --build-arg TORCH_INDEX=<PyTorch's CPU wheel index> -t edgekd:x86-cpu .
# Run (the current folder holds teachers, data and runs):
#   docker run --rm -v "$PWD:/work" edgekd:x86-cpu compress --out /work/runs/demo
FROM python:3.11.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
# torch's default Linux wheel pulls the CUDA libraries (several GB); an index of CPU-only wheels
# (PyTorch publishes one) keeps the image small. Empty: the default index.
ARG TORCH_INDEX=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/edgekd
COPY pyproject.toml README.md ./
COPY targets ./targets
COPY edgekd ./edgekd
RUN if [ -n "$TORCH_INDEX" ]; then export PIP_INDEX_URL="$TORCH_INDEX"; fi \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && unset PIP_INDEX_URL \
    && pip install --no-cache-dir ./ \
    && useradd --create-home --uid 1000 edgekd

USER 1000:1000
WORKDIR /work
# smoke test at build time: the runtimes import and the x86 target stands in here
RUN edgekd doctor
ENTRYPOINT ["edgekd"]
CMD ["doctor"]
