# syntax=docker/dockerfile:1
# The memory service: one binary (`memory`), one image; the subcommand picks the role.
#
#   docker build -t memory-layer:0.1.0 --build-arg REVISION=$(git rev-parse --short=12 HEAD) .
#   docker run --rm memory-layer:0.1.0 --help
#
# Roles: `all` (the default), `gateway` (API on 8080), `embedder`, `searcher`, `retention`; every role
# serves /metrics, /healthz and /readyz on its ops port 9090. One-shot commands: `migrate`,
# `fetch-model DIR`, `tenants …`, `keys …`, `reembed`, `probe [URL]` (the healthcheck).
# docker-compose.yml runs the whole stack (see its header).

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /build
# Only what the build reads: the workspace manifest and lock file, and every member crate (cargo
# loads the whole workspace, benches and tests included). A new workspace member needs a line here.
COPY Cargo.toml Cargo.lock ./
COPY common/ common/
COPY gateway/ gateway/
COPY embedder/ embedder/
COPY searcher/ searcher/
COPY retention/ retention/
COPY memory/ memory/
# The commit for `memory --version` and memory_build_info (there is no .git in the context).
ARG REVISION=unknown
# BuildKit cache mounts keep the crates.io downloads and the compiled dependencies between builds,
# so a source change recompiles only the workspace's own crates. The target directory is a cache
# mount (not part of the image), hence the copy of the binary out of it.
RUN --mount=type=cache,id=memory-layer-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=memory-layer-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=memory-layer-target,target=/build/target,sharing=locked \
    MEMORY_BUILD_COMMIT="$REVISION" cargo build --release --locked -p memory --bin memory \
 && install -D -m 0755 target/release/memory /out/memory

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="memory-layer" \
      org.opencontainers.image.description="Conversation memory for AI chat products: gateway, embedder, searcher and retention roles in one binary" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# CA certificates for TLS to Gemini and PyPI (rustls with the system's roots). A non-root user, and
# /models owned by it so a named volume mounted there (copied from the image) is writable by
# `memory fetch-model`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 memory \
 && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin memory \
 && install -d -o 10001 -g 10001 -m 0755 /models
COPY --from=build /out/memory /usr/local/bin/memory
USER 10001:10001
WORKDIR /
ENV MEMORY_HTTP_ADDR=0.0.0.0:8080 \
    MEMORY_METRICS_ADDR=0.0.0.0:9090 \
    MEMORY_LOG_FORMAT=json
EXPOSE 8080 9090
# Readiness of the ops port (NATS and Postgres reachable); the image has no curl or wget.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/memory", "probe"]
ENTRYPOINT ["/usr/local/bin/memory"]
CMD ["all"]
