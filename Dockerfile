# Build, then a slim runtime image running as a non-root user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin artifact-mirror

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/artifact-mirror mirror \
 && mkdir -p /var/lib/artifact-mirror /etc/artifact-mirror \
 && chown mirror /var/lib/artifact-mirror
COPY --from=build /src/target/release/artifact-mirror /usr/local/bin/artifact-mirror
COPY config/artifact-mirror.toml /etc/artifact-mirror/artifact-mirror.toml
USER mirror
ENV ARTIFACT_MIRROR_CONFIG=/etc/artifact-mirror/artifact-mirror.toml \
    ARTIFACT_MIRROR_LISTEN=0.0.0.0:8080 \
    ARTIFACT_MIRROR_DATA_DIR=/var/lib/artifact-mirror \
    ARTIFACT_MIRROR_LOG_FORMAT=json
EXPOSE 8080
VOLUME /var/lib/artifact-mirror
ENTRYPOINT ["artifact-mirror"]
CMD ["serve"]
