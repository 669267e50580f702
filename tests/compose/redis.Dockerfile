# Redis for the compose test, from the same debootstrap base as the Tandem image (no image registry
# is reachable there): Debian's redis-server, which also brings redis-cli for the health check.
ARG BASE=localhost/tandem-base
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
