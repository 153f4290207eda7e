# The inference worker on an NVIDIA GPU: `switchyard-worker` built with the `cuda` feature on
# a CUDA base image, run as an unprivileged user. Build from the repository root:
#
#   docker build -f deploy/worker.Dockerfile -t switchyard-worker .
#   docker run --gpus 1 -v ~/.cache/switchyard/models:/models:ro -p 9001:9001 \
#     switchyard-worker --model /models/llama-3.1-8b-instruct.Q4_K_M.gguf
#
# The kernels are compiled to cubins at build time by NVRTC from pinned PyPI wheels
# (`cargo xtask cuda-tools`), so neither stage needs the CUDA toolkit; at run time the worker
# loads the driver that the NVIDIA container runtime mounts into the container.
ARG RUST_VERSION=1.95.0
ARG CUDA_BASE=docker.io/nvidia/cuda:12.9.1-base-ubuntu24.04

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo run --locked -p xtask -- cuda-tools \
    && cargo build --release --locked -p switchyard-worker --features cuda \
    && install -D -m 0755 target/release/switchyard-worker /out/switchyard-worker

FROM ${CUDA_BASE}
# curl: the health check (the worker's /healthz is 503 while the model loads, hence the
# long start period for large models).
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/switchyard --create-home switchyard \
    && mkdir -p /models && chown switchyard:switchyard /models
COPY --from=build /out/switchyard-worker /usr/local/bin/switchyard-worker
USER 10001:10001
ENV SWITCHYARD_MODELS=/models \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# The GGUF files (read-only is fine for a file given by path; `smollm2` is fetched into it).
VOLUME ["/models"]
EXPOSE 9001
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9001/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/switchyard-worker", "--host", "0.0.0.0", "--port", "9001", "--device", "cuda:0"]
# Give the model path (and any other flag): `... switchyard-worker --model /models/F.gguf`.
CMD ["--model", "/models/model.gguf"]
