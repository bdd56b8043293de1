# vidgate: build with the Rust toolchain, run on a slim Debian with nothing but CA certificates.
# tests/ops/deploy_files.rs checks the ENV names, EXPOSE ports and HEALTHCHECK against the config.

FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Dependencies (and the generated protobuf code) first, against stub sources, so a change to
# vidgate's own code reuses this layer. The stubs cover every target the manifest names (one
# per `[[bench]]` in Cargo.toml, which cargo requires to exist).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY migrations ./migrations
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in $(grep -A1 '^\[\[bench\]\]' Cargo.toml | sed -n 's/^name = "\(.*\)"$/\1/p'); do \
         echo 'fn main() {}' > "benches/$bench.rs"; \
       done \
    && cargo build --release --locked \
    && rm -rf src benches

COPY . .
# COPY keeps the files' old modification times, older than the stubs' builds: touch them so
# cargo rebuilds vidgate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin vidgate \
    && cp target/release/vidgate /usr/local/bin/vidgate

FROM debian:bookworm-slim AS runtime
# ca-certificates unpinned on purpose: the newest roots are the right ones.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vidgate \
    && useradd --system --uid 10001 --gid vidgate --home-dir /var/lib/vidgate --shell /usr/sbin/nologin vidgate \
    && mkdir -p /var/lib/vidgate \
    && chown vidgate:vidgate /var/lib/vidgate

COPY --from=builder /usr/local/bin/vidgate /usr/local/bin/vidgate

ENV VIDGATE_GRPC_LISTEN=0.0.0.0:50051 \
    VIDGATE_ADMIN_LISTEN=0.0.0.0:9464 \
    VIDGATE_DATA_DIR=/var/lib/vidgate \
    VIDGATE_LOG_FORMAT=json \
    VIDGATE_HEALTHCHECK_URL=http://127.0.0.1:9464/readyz

USER 10001:10001
WORKDIR /var/lib/vidgate
VOLUME ["/var/lib/vidgate"]
# gRPC, admin (/metrics, /healthz, /readyz)
EXPOSE 50051 9464

# Ready, not only alive: the store, the broker when configured and the dispatcher all work.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["vidgate", "healthcheck"]

ENTRYPOINT ["vidgate"]
CMD ["serve"]
