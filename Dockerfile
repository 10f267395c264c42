# syntax=docker/dockerfile:1
#
# One image for every component: the single `taskstream` binary, run as
# `taskstream api`, `taskstream relay`, `taskstream notifier` or
# `taskstream auditor` (the Helm chart in deploy/helm/taskstream sets the
# command per Deployment).
#
#   docker build -t taskstream:dev .
#   docker run --rm taskstream:dev --help

# ---- build -------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# rdkafka is built with the `ssl` feature against the system OpenSSL; the
# librdkafka build itself also needs make, perl and a C compiler, which the
# rust image already has. Debian's package versions are not pinned: a point
# release removes the old ones, and the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# The Avro schemas are compiled into the binary (include_str!).
COPY schemas schemas

# The cache mounts keep the crates.io downloads and the compiled dependencies
# between builds, so a change to our own code recompiles only our crates.
# The binary is copied out of the cached target directory, which does not
# survive into the image. `--no-default-features` leaves out `taskstream bench`
# and its dependencies (plotting, histograms, an HTTP load client).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p taskstream --no-default-features \
    && install -D -m 0755 target/release/taskstream /out/taskstream

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# libssl3: librdkafka's TLS and SASL/SCRAM; ca-certificates: trust for TLS
# endpoints other than the Kafka cluster (whose CA is mounted by the chart).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A numeric, non-root user, so Kubernetes can verify runAsNonRoot without
# looking the name up.
RUN groupadd --system --gid 65532 taskstream \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin taskstream \
    && install -d -o 65532 -g 65532 /var/lib/taskstream

COPY --from=builder /out/taskstream /usr/local/bin/taskstream

# Components started without --data-dir keep their local files here; on
# Kubernetes the root filesystem is read-only and the chart mounts an emptyDir.
WORKDIR /var/lib/taskstream
USER 65532:65532

ENTRYPOINT ["taskstream"]
CMD ["--help"]
