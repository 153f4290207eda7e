# The gateway image: the static `switchyard` binary (musl) alone on an empty base, run as an
# unprivileged user. Build from the repository root:
#
#   docker build -f deploy/gateway.Dockerfile -t switchyard .
#
# The `build` stage compiles it from this checkout. `--build-arg BINARY_FROM=prebuilt` takes
# an already built static binary from `target/x86_64-unknown-linux-musl/release/switchyard`
# instead (built with `cargo build --release --target x86_64-unknown-linux-musl -p switchyard
# --no-default-features`; `--build-arg PREBUILT=PATH` names another), which is how the tests
# build the image without a registry (podman; tests/tests/e2e/deploy.rs).
ARG BINARY_FROM=build
ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# No `local-worker` feature: the gateway image links no model code (the worker has its own
# image); a config with `[local_worker]` is refused with a message naming the feature.
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
        -p switchyard --no-default-features \
    && install -D -m 0755 target/x86_64-unknown-linux-musl/release/switchyard /out/switchyard

FROM scratch AS prebuilt
ARG PREBUILT=target/x86_64-unknown-linux-musl/release/switchyard
COPY ${PREBUILT} /out/switchyard

FROM ${BINARY_FROM} AS binary

FROM scratch
# A user for the gateway and the folders it writes, owned by it (a scratch image has no
# shell to make them): deploy/image-root/.
COPY deploy/image-root/root/ /
COPY --chown=10001:10001 deploy/image-root/state/ /var/lib/switchyard/
COPY --from=binary /out/switchyard /switchyard
USER 10001:10001
ENV SWITCHYARD_CONFIG=/etc/switchyard/switchyard.toml \
    XDG_CACHE_HOME=/var/lib/switchyard/cache \
    HOME=/var/lib/switchyard \
    SWITCHYARD_LOG_FORMAT=json
WORKDIR /var/lib/switchyard
# The config (mount a file or a ConfigMap here; it is re-read live) and the state: the
# SQLite store `[state] path` (relative paths land here) and the compiled-plugin cache.
VOLUME ["/etc/switchyard", "/var/lib/switchyard"]
EXPOSE 8080
# The image has no shell or curl: the binary asks itself (`switchyard health`: GET /healthz
# on the config's listen address, exit 0 on 200).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/switchyard", "health"]
ENTRYPOINT ["/switchyard"]
CMD ["serve"]
