"""The container image, built from deploy/Dockerfile by `scripts/image.sh` (what `make
image` runs) and run as a container runtime would run it.

No image registry and no OCI runtime work on the test machines (the sandbox refuses
``setrlimit``), so the image is built with buildah on a stand-in base made from Debian
12's packages (``--standin``), and run from its own filesystem: ``podman image mount``
(read-only) in a private mount namespace, tmpfs on the two writable paths the manifests
mount (``/tmp``, ``/home/app/.cache``), ``chroot`` as the image's user, with the image's
environment, working directory and entrypoint. The host's network, as ``--network host``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, json_lines

TAG = "localhost/deepfake-monitor:test"
CLIPS = "/tmp/clips"  # where a host folder appears inside the image's filesystem

# Mount what a runtime would, then become the image's user in its root: $1 the image's
# read-only filesystem, $2 a host folder for CLIPS, the rest the command.
ENTER = r"""
set -e
root=$(mktemp -d)
mount --rbind "$1" "$root"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o uid=10001,gid=10001,mode=0700 tmpfs "$root/home/app/.cache"
mount --rbind /dev "$root/dev"
mount --rbind /proc "$root/proc"
mount --rbind -o ro /sys "$root/sys"
mkdir "$root$CLIPS" && mount --bind -o ro "$2" "$root$CLIPS"
user=$3
shift 3
exec chroot --userspec="$user" "$root" "$@"
"""


@dataclass
class Image:
    root: Path
    config: dict
    build_log: str

    def command(self, *args: str, env: dict[str, str] | None = None, clips: Path = REPO,
                entrypoint: list[str] | None = None) -> list[str]:  # fmt: skip
        """The command line that runs ``args`` in the image as a runtime would run it (no
        ``args``: the image's CMD)."""
        if entrypoint is None:
            entrypoint, args = self.config["Entrypoint"], args or tuple(self.config["Cmd"])
        environment = dict(e.split("=", 1) for e in self.config["Env"]) | (env or {})
        return [
            "unshare", "--mount", "--propagation", "private", "--fork", "--kill-child",
            "sh", "-c", f"CLIPS={CLIPS}\n{ENTER}", "enter", str(self.root), str(clips),
            self.config["User"], "env", "-i", "-C", self.config["WorkingDir"],
            *(f"{k}={v}" for k, v in environment.items()),
            *entrypoint, *args,
        ]  # fmt: skip

    def run(self, *args: str, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args, **kwargs), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    for tool in ("buildah", "podman", "debootstrap", "unshare", "chroot"):
        assert shutil.which(tool), f"{tool} missing: run 'make setup'"
    built = subprocess.run([str(REPO / "scripts" / "image.sh"), "--standin", "--tag", TAG],
                           capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    inspect = json.loads(
        subprocess.run(
            ["podman", "image", "inspect", TAG], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    config = inspect["Config"] | {"Healthcheck": inspect.get("Healthcheck") or {}}
    root = subprocess.run(["podman", "image", "mount", TAG], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    try:
        yield Image(Path(root), config, built.stderr)
    finally:
        subprocess.run(["podman", "image", "unmount", TAG], capture_output=True)


def names(lock: Path) -> set[str]:
    pinned = re.findall(r"^([A-Za-z0-9_.\-]+)==", lock.read_text(), re.M)
    return {re.sub(r"[-_.]+", "-", n).lower() for n in pinned}


def test_the_image_builds_runs_as_10001_and_holds_no_test_tools(image, capsys):
    line = image.build_log.strip().splitlines()[-1]
    assert re.fullmatch(rf"image: {TAG}: [\d.]+[MG]B, built in \d+ s", line), image.build_log
    with capsys.disabled():
        print(f"\n{line}")
    assert image.config["User"] == "10001:10001"
    assert image.config["Entrypoint"] == ["deepfake-monitor"] and image.config["Cmd"] == ["serve"]
    assert image.config["Healthcheck"].get("Test", [""])[-1].endswith("/healthz")
    site = image.root / "opt/venv/lib/python3.11/site-packages"
    installed = {re.sub(r"[-_.]+", "-", d.name.split("-")[0]).lower()
                 for d in site.glob("*.dist-info")}  # fmt: skip
    runtime = names(REPO / "requirements.lock")
    test_tools = names(REPO / "requirements-dev.lock") - runtime
    assert {"pytest", "mypy", "ruff", "playwright"} <= test_tools
    assert not installed & test_tools, f"test tools in the image: {installed & test_tools}"
    assert {"torch", "mediapipe", "deepfake-monitor"} <= installed
    assert not (image.root / "root/.cache/pip").exists(), "the pip cache landed in a layer"
    # Every shared library MediaPipe's detector and OpenCV load is in the image.
    libraries = [*site.glob("mediapipe/tasks/c/*.so"), *site.glob("cv2/*.so")]
    assert len(libraries) >= 2
    for library in libraries:
        ldd = image.run(f"/{library.relative_to(image.root)}", entrypoint=["ldd"])
        assert ldd.returncode == 0 and "not found" not in ldd.stdout, ldd.stdout
    # Built from this checkout, not an older layer.
    service = site / "streamer" / "service.py"
    assert service.read_bytes() == (REPO / "streamer" / "service.py").read_bytes()


def test_help_and_scan_with_the_bundled_checkpoint_as_10001_read_only(image, synth_clips):
    assert image.run("--help").returncode == 0
    who = image.run("-c", "import os, pathlib\nprint(os.getuid(), os.getgid())\n"
                    "try:\n    pathlib.Path('/opt/venv/x').write_text('x')\n"
                    "except OSError as e:\n    print(e.strerror)",
                    entrypoint=["python"])  # fmt: skip
    assert who.stdout.split("\n")[:2] == ["10001 10001", "Read-only file system"], who
    clip = sorted(synth_clips.glob("*_fake_*.mp4"))[0]
    scan = image.run("scan", f"{CLIPS}/{clip.name}", "--hop", "60", clips=synth_clips,
                     timeout=300)  # fmt: skip
    assert scan.returncode == 0, scan.stderr[-2000:]
    verdicts = json_lines(scan.stdout)
    assert len(verdicts) == 1 and verdicts[0]["faces"]
    assert verdicts[0]["model"]["name"] == "synthetic-demo-mobilenetv3s-lstm256"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_healthz_and_readyz_and_drains(image):
    port = free_port()
    # 0.0.0.0, the image's default: a token is required, as in the compose stack.
    env = {"DFM_HTTP_PORT": str(port), "DFM_API_TOKEN": "image-test-token"}
    serve = subprocess.Popen(image.command(env=env), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        answers: dict[str, int] = {}
        deadline = time.monotonic() + 120
        while len(answers) < 2 and time.monotonic() < deadline and serve.poll() is None:
            for path in ("/healthz", "/readyz"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                        answers[path] = r.status
                except OSError:
                    time.sleep(0.5)
        assert answers == {"/healthz": 200, "/readyz": 200}, serve.poll() or answers
    finally:
        # SIGTERM to the service itself (unshare's child), as a runtime stops a container;
        # unshare then exits with its status.
        child = subprocess.run(["pgrep", "-P", str(serve.pid)], capture_output=True,
                               text=True).stdout.split()  # fmt: skip
        if serve.poll() is None:
            os.kill(int(child[0]) if child else serve.pid, signal.SIGTERM)
        out, err = serve.communicate(timeout=60)
    assert serve.returncode == 0, err[-2000:]
