# fieldgate container image. Needs BuildKit (the default since Docker 23; with Docker 20.10
# set DOCKER_BUILDKIT=1) for the cache mounts below; no `# syntax` line, so the builder's
# own Dockerfile frontend is used and nothing beyond the two base images is pulled.
#
#   docker build -t fieldgate .
#   docker run -d --name fieldgate --network host \
#       -v /srv/fieldgate/etc:/etc/fieldgate:ro -v fieldgate-state:/var/lib/fieldgate fieldgate
#
# The gateway runs as uid 10001; a bind-mounted state directory must be writable by it.

# ---- build ---------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Dependency cache: BuildKit cache mounts keep the cargo registry and the target directory
# between builds, so only changed crates are recompiled. Unlike the "stub main.rs" trick this
# needs no list of workspace members to keep in sync. The cache mount is not part of the
# image, so the binary is copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fieldgate \
 && install -D -m 0755 target/release/fieldgate /out/fieldgate

# ---- runtime -------------------------------------------------------------------------
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="fieldgate" \
      org.opencontainers.image.description="Edge gateway that makes every field-bus device its own XMPP entity" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Fixed uid/gid so that bind mounts can be prepared on the host (chown 10001). Member of
# dialout for serial ports (Modbus RTU), passed in with --device.
RUN groupadd --system --gid 10001 fieldgate \
 && useradd --system --uid 10001 --gid fieldgate --groups dialout \
        --home-dir /var/lib/fieldgate --no-create-home --shell /usr/sbin/nologin fieldgate \
 && install -d -o root -g fieldgate -m 0750 /etc/fieldgate \
 && install -d -o fieldgate -g fieldgate -m 0700 /var/lib/fieldgate

COPY --from=build /out/fieldgate /usr/bin/fieldgate

# The gateway's default state directory is $STATE_DIRECTORY (subscribers.json lives there).
ENV STATE_DIRECTORY=/var/lib/fieldgate
VOLUME ["/etc/fieldgate", "/var/lib/fieldgate"]
# Numeric, so that runtimes can verify "non-root" without reading /etc/passwd. The uid
# alone, not uid:gid: with an explicit group Docker drops the supplementary groups, and
# with them dialout (serial ports).
USER 10001

# SIGTERM: unavailable presence to every subscriber, stream closed, exit 0 within 5 s
# (well inside `docker stop`'s default 10 s). The gateway handles its signals itself and
# starts no child processes, so it can run as PID 1 without an init.
STOPSIGNAL SIGTERM
# No HEALTHCHECK: the gateway has no health endpoint or status command. `fieldgate check`
# only validates the config file and would report healthy while the XMPP link is down, and
# a process-alive check adds nothing to Docker's own restart policy. Watch the logs instead.
ENTRYPOINT ["/usr/bin/fieldgate"]
CMD ["run", "--config", "/etc/fieldgate/fieldgate.toml"]
