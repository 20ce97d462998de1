# artifact-mirror: build, then a slim runtime image running as a non-root user.
#
#   docker build -t artifact-mirror .                    # the mirror (last stage)
#   docker build --target ghes-sim -t ghes-sim .         # the GHES simulator (demo only)
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.
# tests/compose.rs checks this file against docker-compose.yml.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS source
WORKDIR /src
COPY . .

FROM source AS build
# The target dir is a cache mount (kept between builds, not in the image), so
# the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin artifact-mirror \
 && install -m 0755 target/release/artifact-mirror /usr/local/bin/artifact-mirror

# The simulator, for `docker compose --profile demo`. An example, so it is
# built with the dev-dependencies; never part of the mirror image.
FROM source AS ghes-sim-build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --example ghes-sim \
 && install -m 0755 target/release/examples/ghes-sim /usr/local/bin/ghes-sim

FROM debian:${DEBIAN_RELEASE}-slim AS ghes-sim
RUN groupadd --system --gid 10002 ghes-sim \
 && useradd --system --uid 10002 --gid 10002 --no-create-home --shell /usr/sbin/nologin ghes-sim
COPY --from=ghes-sim-build /usr/local/bin/ghes-sim /usr/local/bin/ghes-sim
USER 10002:10002
EXPOSE 9090 9091
ENTRYPOINT ["ghes-sim"]
CMD ["--api", "0.0.0.0:9090", "--blob", "0.0.0.0:9091", "--advertise-host", "ghes-sim"]

# The mirror: the default target, so it stays the last stage.
FROM debian:${DEBIAN_RELEASE}-slim AS mirror
# ca-certificates: system roots for an https upstream; curl: the health check.
# /var/lib/artifact-mirror-secret: where docker-compose's scale profile
# mounts the volume its replicas share the instance key on; a new named
# volume takes this directory's owner, so the first replica can create the
# key there.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mirror \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/artifact-mirror --shell /usr/sbin/nologin mirror \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/artifact-mirror \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/artifact-mirror-secret \
 && install -d -m 0755 /etc/artifact-mirror
COPY --from=build /usr/local/bin/artifact-mirror /usr/local/bin/artifact-mirror
COPY config/artifact-mirror.toml /etc/artifact-mirror/artifact-mirror.toml
# These win over the settings file (its listen and data_dir are for a bare
# `serve` on a workstation); everything else comes from the file.
ENV ARTIFACT_MIRROR_CONFIG=/etc/artifact-mirror/artifact-mirror.toml \
    ARTIFACT_MIRROR_LISTEN=0.0.0.0:8080 \
    ARTIFACT_MIRROR_DATA_DIR=/var/lib/artifact-mirror \
    ARTIFACT_MIRROR_LOG_FORMAT=json
WORKDIR /var/lib/artifact-mirror
# Numeric, so a runtime can verify "non-root" (Kubernetes runAsNonRoot).
USER 10001:10001
EXPOSE 8080
VOLUME ["/var/lib/artifact-mirror"]
# Port taken from ARTIFACT_MIRROR_LISTEN, so overriding it keeps this right.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${ARTIFACT_MIRROR_LISTEN##*:}/readyz" || exit 1
# SIGTERM: in-flight requests get shutdown_grace (30s) to finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["artifact-mirror"]
CMD ["serve"]
