# edgekd on an x86-64 or ARM server with an NVIDIA GPU: TensorRT 10 engines built from the exports.
# The base is NVIDIA's TensorRT container (TensorRT 10.7, CUDA 12.6, Python 3.12, its Python
# bindings importable). Build from the repository root:
#   docker build -f docker/nvidia-gpu.Dockerfile -t edgekd:nvidia-gpu .
# Run: docker run --rm --gpus all -v "$PWD:/work" edgekd:nvidia-gpu doctor
FROM nvcr.io/nvidia/tensorrt:24.12-py3

ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/edgekd
COPY pyproject.toml README.md ./
COPY targets ./targets
COPY edgekd ./edgekd
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "./[tensorrt]" \
    && useradd --create-home --uid 1001 edgekd

USER 1001:1001
WORKDIR /work
# smoke test at build time (no GPU is needed to import them)
RUN python -c "import tensorrt, onnxruntime; print(tensorrt.__version__, onnxruntime.__version__)"
ENTRYPOINT ["edgekd"]
CMD ["doctor"]
