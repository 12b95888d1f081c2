# Container images for the two binaries of the Cargo package ecs-task-protection.
#
# Stages:
#   builder         compiles both release binaries on Debian bookworm with a pinned Rust toolchain;
#   queue-consumer  the SQS worker;
#   websocket       the WebSocket server (the last stage: what a plain `docker build` gives).
# Both runtime stages are distroless "cc" (glibc + libgcc + CA certificates, no shell, no package
# manager), running as the image's non-root user with nothing added but one binary.
# The page the server shows is compiled into the binary (include_str!), so static/ is only
# needed at build time. TLS is rustls / plain HTTP, so no OpenSSL is needed anywhere.
#
# Build:  docker build -t websocket .
#         docker build --target queue-consumer -t queue-consumer .
# Run:    docker run --rm -p 3000:3000 -e LOG_FORMAT=text websocket

FROM rust:1.95.0-slim-bookworm AS builder
WORKDIR /build

# 1) Dependencies only. With just the manifests and lockfile (plus placeholder sources), this layer
#    is rebuilt only when a Cargo.toml or Cargo.lock changes, so editing src/ does not recompile
#    the whole dependency tree. The workspace's other members (the test stand-ins and the load
#    tool) are never built for the image; cargo only needs their manifests, and a target each.
COPY Cargo.toml Cargo.lock ./
COPY crates/ecs-stand-in/Cargo.toml crates/ecs-stand-in/
COPY tools/load/Cargo.toml tools/load/
RUN mkdir -p src/bin crates/ecs-stand-in/src tools/load/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/queue-consumer.rs \
    && : > src/lib.rs \
    && : > crates/ecs-stand-in/src/lib.rs \
    && echo 'fn main() {}' > tools/load/src/main.rs \
    && cargo build --release --locked --bin websocket \
    && rm -rf src

# 2) The project itself. COPY keeps the files' original modification times, which can be older
#    than the placeholder build above; cargo would then think the crate is up to date and ship the
#    placeholder binary. Touching every source makes the real build happen.
COPY src ./src
COPY static ./static
RUN find src static -type f -exec touch {} + \
    && cargo build --release --locked --bin websocket --bin queue-consumer

FROM gcr.io/distroless/cc-debian12:nonroot AS queue-consumer
LABEL org.opencontainers.image.title="queue-consumer" \
      org.opencontainers.image.description="SQS worker that keeps its Amazon ECS task protected from scale-in while it has jobs in hand" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /build/target/release/queue-consumer /usr/local/bin/queue-consumer
# LOG_FORMAT=json: one JSON object per line, which CloudWatch Logs Insights can query.
# /healthz and /status listen on loopback only: `queue-consumer health` is the container's check.
ENV LOG_FORMAT=json \
    STATUS_PORT=8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/queue-consumer"]

FROM gcr.io/distroless/cc-debian12:nonroot AS websocket
LABEL org.opencontainers.image.title="websocket" \
      org.opencontainers.image.description="WebSocket server that keeps its Amazon ECS task protected from scale-in while clients are connected" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /build/target/release/websocket /usr/local/bin/websocket
# LOG_FORMAT=json: one JSON object per line, which CloudWatch Logs Insights can query.
ENV PORT=3000 \
    LOG_FORMAT=json
EXPOSE 3000
# The distroless "nonroot" user (uid/gid 65532); numeric so that any runtime can verify it is not root.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/websocket"]
