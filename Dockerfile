# syntax=docker/dockerfile:1
# Container images for the two binaries of the Cargo package ecs-task-protection.
#
# Stages:
#   builder         compiles both release binaries on Debian 13 (trixie) with a pinned Rust toolchain,
#                   on the machine's own platform ($BUILDPLATFORM), cross-compiling to the image's
#                   ($TARGETPLATFORM): an arm64 image built on an x86_64 machine (or the reverse)
#                   compiles at native speed, not under QEMU emulation;
#   queue-consumer  the SQS worker;
#   websocket       the WebSocket server (the last stage: what a plain `docker build` gives).
# Both runtime stages are distroless "cc" for Debian 13 (glibc + libgcc + CA certificates, no shell,
# no package manager), running as the image's non-root user with nothing added but one binary. The
# builder is Debian 13 too, so the binaries link against the glibc (2.41) they run with.
# The page the server shows is compiled into the binary (include_str!), so static/ is only
# needed at build time. TLS is rustls on ring / plain HTTP, so no OpenSSL is needed anywhere: the
# only C code is ring's, which the cross C compiler builds.
#
# Build (BuildKit, the default builder of Docker 23+; buildx for another platform):
#         docker build -t websocket .
#         docker build --target queue-consumer -t queue-consumer .
#         docker buildx build --platform linux/arm64 -t websocket .
# Run:    docker run --rm -p 3000:3000 -e LOG_FORMAT=text websocket

# --platform=$BUILDPLATFORM: the compiler runs natively whatever the target.
FROM --platform=$BUILDPLATFORM rust:1.95.0-slim-trixie AS builder
# Set by BuildKit from --platform (default: the machine's own): amd64 or arm64.
ARG TARGETARCH
WORKDIR /build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# 0) The target: its Rust triple and, when it is not the machine's own architecture, Debian's
#    cross C compiler and libc for it (the linker, and ring's C and assembly). Written to
#    /build/target.env for the steps below. Versions come from the pinned image's Debian release;
#    pinning each package's exact version would break the build whenever trixie's mirror moves on
#    to a security update.
# hadolint ignore=DL3008
RUN case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu;  gnu=x86_64-linux-gnu;  debarch=amd64 ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; debarch=arm64 ;; \
      *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64 or arm64)" >&2; exit 1 ;; \
    esac \
    && if [[ "$(dpkg --print-architecture)" != "$debarch" ]]; then \
         apt-get update \
         && apt-get install -y --no-install-recommends "gcc-${gnu//_/-}" "libc6-dev-${debarch}-cross" \
         && rm -rf /var/lib/apt/lists/* ; \
       fi \
    && rustup target add "$triple" \
    && env_triple=${triple^^} && env_triple=${env_triple//-/_} \
    && { echo "export TRIPLE=$triple" \
         && echo "export CARGO_TARGET_${env_triple}_LINKER=${gnu}-gcc" \
         && echo "export CC_${triple//-/_}=${gnu}-gcc" \
         && echo "export AR_${triple//-/_}=${gnu}-ar"; } > /build/target.env

# 1) Dependencies only. With just the manifests and lockfile (plus placeholder sources), this step
#    compiles the whole dependency tree, and is redone only when a Cargo.toml or Cargo.lock
#    changes. The workspace's other members (the test stand-ins and the load tool) are never built
#    for the image; cargo only needs their manifests, and a target each. The cargo registry and
#    the target directory are BuildKit cache mounts: kept between builds (per target: cargo keeps
#    each triple's artefacts apart), never part of an image layer.
COPY Cargo.toml Cargo.lock ./
COPY crates/ecs-task-protection ./crates/ecs-task-protection
COPY crates/app-support/Cargo.toml crates/app-support/
COPY crates/queue-consumer/Cargo.toml crates/queue-consumer/
COPY crates/ecs-stand-in/Cargo.toml crates/ecs-stand-in/
COPY tools/load/Cargo.toml tools/load/
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    source /build/target.env \
    && mkdir -p src crates/app-support/src crates/queue-consumer/src crates/ecs-stand-in/src \
       tools/load/src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && : > crates/app-support/src/lib.rs \
    && echo 'fn main() {}' > crates/queue-consumer/src/main.rs \
    && : > crates/queue-consumer/src/lib.rs \
    && : > crates/ecs-stand-in/src/lib.rs \
    && echo 'fn main() {}' > tools/load/src/main.rs \
    && cargo build --release --locked --target "$TRIPLE" --bin websocket --bin queue-consumer \
    && rm -rf src crates/app-support/src crates/queue-consumer/src

# 2) The project itself. COPY keeps the files' original modification times, which can be older
#    than the placeholder build above (kept in the target cache); cargo would then think the crate
#    is up to date and ship the placeholder binary. Touching every source makes the real build
#    happen. The binaries are copied out of the cache mount into /out, which is in the layer.
COPY src ./src
COPY static ./static
COPY crates/app-support/src ./crates/app-support/src
COPY crates/queue-consumer/src ./crates/queue-consumer/src
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    source /build/target.env \
    && find src static crates/ecs-task-protection/src crates/app-support/src \
         crates/queue-consumer/src -type f -exec touch {} + \
    && cargo build --release --locked --target "$TRIPLE" --bin websocket --bin queue-consumer \
    && mkdir -p /out \
    && cp "target/$TRIPLE/release/websocket" "target/$TRIPLE/release/queue-consumer" /out/

# The runtime stages are of the target platform (no --platform): the image's architecture.
FROM gcr.io/distroless/cc-debian13:nonroot AS queue-consumer
LABEL org.opencontainers.image.title="queue-consumer" \
      org.opencontainers.image.description="SQS worker that keeps its Amazon ECS task protected from scale-in while it has jobs in hand" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/queue-consumer /usr/local/bin/queue-consumer
# LOG_FORMAT=json: one JSON object per line, which CloudWatch Logs Insights can query.
# /healthz and /status listen on loopback only: `queue-consumer health` is the container's check.
ENV LOG_FORMAT=json \
    STATUS_PORT=8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/queue-consumer"]

FROM gcr.io/distroless/cc-debian13:nonroot AS websocket
LABEL org.opencontainers.image.title="websocket" \
      org.opencontainers.image.description="WebSocket server that keeps its Amazon ECS task protected from scale-in while clients are connected" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/websocket /usr/local/bin/websocket
# LOG_FORMAT=json: one JSON object per line, which CloudWatch Logs Insights can query.
ENV PORT=3000 \
    LOG_FORMAT=json
EXPOSE 3000
# The distroless "nonroot" user (uid/gid 65532); numeric so that any runtime can verify it is not root.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/websocket"]
