# edgekd on NVIDIA Jetson Orin with JetPack 6.1 (L4T r36.4: CUDA 12.6, TensorRT 10.3, Python 3.10).
# The host's L4T release must match the base image's (r36.x): `cat /etc/nv_tegra_release`.
# Build on the Jetson from the repository root, with NVIDIA's Jetson wheels for JetPack 6 / CUDA
# 12.6 (onnxruntime-gpu and torch are not on PyPI for Jetson; pass their wheel files or URLs):
#   docker build -f docker/jetson-jp6.Dockerfile \
#     --build-arg ORT_WHEEL=<onnxruntime_gpu-...-cp310-linux_aarch64.whl> \
#     --build-arg TORCH_WHEEL=<torch-...-cp310-linux_aarch64.whl> -t edgekd:jp6 .
# Run: docker run --rm -it --runtime nvidia -v "$PWD/bundle:/work/bundle" edgekd:jp6 doctor
FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0

ARG ORT_WHEEL
ARG TORCH_WHEEL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# apt versions follow the base image's Ubuntu 22.04 release; TensorRT's Python bindings come
# with JetPack (python3-libnvinfer)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip python3-libnvinfer \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/edgekd
COPY pyproject.toml README.md ./
COPY targets ./targets
COPY edgekd ./edgekd
# the Jetson wheels are files given at build time: their names carry their versions
# hadolint ignore=DL3013
RUN test -n "$ORT_WHEEL" && test -n "$TORCH_WHEEL" \
    && pip3 install --no-cache-dir "$TORCH_WHEEL" "$ORT_WHEEL" \
    && pip3 install --no-cache-dir ./ \
    && useradd --create-home --uid 1000 edgekd

USER 1000:1000
WORKDIR /work
# smoke test at build time: TensorRT and ONNX Runtime import, and doctor reads the L4T release
RUN python3 -c "import tensorrt, onnxruntime; print(tensorrt.__version__, onnxruntime.__version__)" \
    && edgekd doctor
ENTRYPOINT ["edgekd"]
CMD ["doctor"]
