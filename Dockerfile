# syntax=docker/dockerfile:1
# The danmaku image: one binary that runs any subset of the roles
# (`--roles ingest|live|archive|replay-api`, docs/OPERATIONS.md).
#
#   docker build -t danmaku .
#   docker run -p 8080:8080 -v danmaku-data:/var/lib/danmaku danmaku
#
# Stage 1 builds the release binary; stage 2 is a small Debian runtime with
# the binary, CA certificates (S3 over TLS) and curl for the health check,
# running as an unprivileged user. Checked statically by tests/ops_artifacts.rs.

# The toolchain the project is tested with (rustc 1.95); some locked
# dependencies need at least 1.89, above the workspace's rust-version.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# librdkafka (rdkafka-sys) is built from source with its configure script;
# zstd and jemalloc are C too: the rust image has gcc, g++ and make, these add
# the rest.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Keep symbols for backtraces, drop the debug info (profile.release has
# debug = 1 for profiling on a build machine); the binary is copied out of the
# cache mount since the mount is gone after this step.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p danmaku --bin danmaku \
 && install -D -m 0755 target/release/danmaku /out/danmaku

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 danmaku \
 && useradd --system --uid 10001 --gid danmaku --home-dir /var/lib/danmaku --shell /usr/sbin/nologin danmaku \
 && install -d -o danmaku -g danmaku -m 0750 /var/lib/danmaku
COPY --from=builder /out/danmaku /usr/local/bin/danmaku
# The defaults listen on 127.0.0.1 and keep data under ./data: in a container
# the listener must face the network and the data goes to the volume.
ENV DANMAKU_SERVER__LISTEN=0.0.0.0:8080 \
    DANMAKU_SERVER__DATA_DIR=/var/lib/danmaku \
    RUST_LOG=info
WORKDIR /var/lib/danmaku
VOLUME ["/var/lib/danmaku"]
EXPOSE 8080
USER 10001:10001
# /healthz answers even at the connection caps (docs/OPERATIONS.md, "Limits").
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
# SIGTERM drains gracefully within server.shutdown_grace_secs per stage: give
# `docker stop -t` / the orchestrator's grace period more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/danmaku"]
CMD ["serve"]
