#!/usr/bin/env bash
# Host setup for `make compose-test`, idempotent: Debian's podman with runc and cgroupfs (no
# systemd here), netavark + aardvark-dns so containers reach each other by service name,
# debootstrap to make the base images (no image registry is reachable), and podman-compose from
# PyPI into the project's venv. Needs root and Debian bookworm's apt sources.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}

need=()
for cmd in podman runc debootstrap netavark aardvark-dns iptables; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/lib/podman/$cmd" ] || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup_host: installing podman runc debootstrap netavark aardvark-dns iptables (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        podman runc debootstrap netavark aardvark-dns iptables ca-certificates >/dev/null
fi

conf=/etc/containers/containers.conf
want='# Written by tandem tests/compose/setup_host.sh: this machine has no systemd and caps open files.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
'
if ! printf '%s' "$want" | cmp -s - "$conf"; then
    echo "setup_host: writing $conf"
    mkdir -p /etc/containers
    printf '%s' "$want" >"$conf"
fi

if [ ! -x "$VENV/bin/podman-compose" ]; then
    echo "setup_host: pip install podman-compose into $VENV"
    "$VENV/bin/pip" install -q podman-compose
fi
echo "setup_host: $(podman --version), $("$VENV/bin/podman-compose" version 2>/dev/null | head -n 1)"
