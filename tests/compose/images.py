"""The compose test's images, built without an image registry: a debootstrapped Debian base, Redis
on it, and the repository's Dockerfile on it (with the host's pip wheel folders and CA bundle)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.compose.shell import HERE, REPO, run, say

BASE_IMAGE = "localhost/tandem-base"
REDIS_IMAGE = "localhost/tandem-redis"
TANDEM_IMAGE = "localhost/tandem:latest"
MIRROR = "http://deb.debian.org/debian"


def image_exists(name: str) -> bool:
    return run(["podman", "image", "exists", name], check=False, quiet=True).returncode == 0


def build_base_image() -> None:
    """Debian bookworm (minbase + python3, python3-venv, ca-certificates) as ``localhost/tandem-base``."""
    if image_exists(BASE_IMAGE):
        say(f"{BASE_IMAGE} exists (--fresh rebuilds it)")
        return
    say(f"debootstrap bookworm → {BASE_IMAGE} (about a minute)")
    with tempfile.TemporaryDirectory(prefix="tandem-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             "bookworm", str(rootfs), MIRROR], stdout=subprocess.DEVNULL)  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, quiet=True)
        if tar.wait() != 0:
            raise RuntimeError(f"tar of {rootfs} exited with {tar.returncode}")


def pip_setting(key: str) -> str:
    """A value of the host's pip configuration (``pip config list``), '' when unset."""
    out = run([sys.executable, "-m", "pip", "config", "list"], check=False, quiet=True).stdout
    for line in out.splitlines():
        name, _, value = line.partition("=")
        if name.rsplit(".", 1)[-1] == key:
            return value.strip().strip("'\"")
    return ""


def host_pip_mounts() -> tuple[list[str], list[str]]:
    """``podman build`` volumes and build args that give the build the host's pip wheel folders
    (find-links: the CPU torch wheel lies there) and CA bundle (pip's way to the package index)."""
    volumes: list[str] = []
    args: list[str] = []
    links = os.environ.get("PIP_FIND_LINKS") or pip_setting("find-links")
    folders = [p for p in links.split() if Path(p).is_dir()]
    if folders:
        inside = [f"/host-wheels/{i}" for i in range(len(folders))]
        volumes += [f"{src}:{dst}:ro" for src, dst in zip(folders, inside)]
        # The local torch wheel is the CPU build; with no index override pip picks it from there.
        args += [f"WHEELS={' '.join(inside)}", "TORCH_INDEX="]
    candidates = [os.environ.get("PIP_CERT"), pip_setting("cert"), os.environ.get("SSL_CERT_FILE"),
                  "/etc/ssl/certs/ca-certificates.crt"]  # fmt: skip
    bundle = next((c for c in candidates if c and Path(c).is_file()), None)
    if bundle:
        volumes.append(f"{bundle}:/etc/host-ca-bundle.crt:ro")
        args.append("CA_BUNDLE=/etc/host-ca-bundle.crt")
    return volumes, args


def build_images() -> None:
    say(f"building {REDIS_IMAGE} (Debian's redis-server on the base)")
    run(["podman", "build", "--network=host", "--build-arg", f"BASE={BASE_IMAGE}", "-t", REDIS_IMAGE,
         "-f", str(HERE / "redis.Dockerfile"), str(HERE)], stdout=subprocess.DEVNULL)  # fmt: skip
    volumes, args = host_pip_mounts()
    say(f"building {TANDEM_IMAGE} from the Dockerfile (minutes from scratch: torch, deps, model conversion)")
    cmd = ["podman", "build", "--network=host", "--build-arg", f"BASE={BASE_IMAGE}", "-t", TANDEM_IMAGE]
    for v in volumes:
        cmd += ["-v", v]
    for a in args:
        cmd += ["--build-arg", a]
    run([*cmd, str(REPO)])
