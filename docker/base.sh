#!/usr/bin/env bash
# A local stand-in for the Dockerfile's public base image, made from Debian's own packages where
# Docker Hub cannot be reached: debootstrap a Debian 12 (bookworm) root with Python 3.11, Java 17,
# procps, tini and CA certificates, and `docker import` it.
#
#   docker/base.sh [TAG]          (default gio-spark-base:bookworm; needs root, debootstrap, docker)
#   docker build --build-arg BASE=gio-spark-base:bookworm -f docker/Dockerfile -t gio-spark .
#
# The CA certificates this host added itself (/usr/local/share/ca-certificates) are added to the
# base too, so that a build behind the same TLS-inspecting proxy can reach PyPI and Maven Central.
set -euo pipefail
TAG="${1:-gio-spark-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=python3,python3-venv,python3-pip,openjdk-17-jre-headless,procps,tini,ca-certificates,libopenblas0-pthread

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists"; exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
ROOT="$(mktemp -d "${TMPDIR:-/tmp}/gio-spark-base.XXXXXX")"
# The clean-up never fails the script: proc is unmounted only where it is still mounted (the
# CA step unmounts it itself; a second umount under set -e ended a finished build with exit 32).
cleanup() {
  if mountpoint -q "$ROOT/proc" 2>/dev/null; then umount "$ROOT/proc" || true; fi
  rm -rf "$ROOT" || true
}
trap cleanup EXIT
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
  || { tail -20 "$ROOT.log" >&2; exit 1; }
rm -f "$ROOT.log"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  # Into the system store (pip, with PIP_CERT) and Java's (Ivy, for Delta's jars).
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  mount -t proc proc "$ROOT/proc"
  chroot "$ROOT" sh -c 'update-ca-certificates >/dev/null 2>&1
    for f in /usr/local/share/ca-certificates/*.crt; do
      keytool -importcert -noprompt -cacerts -storepass changeit \
        -alias "local-$(basename "$f" .crt)" -file "$f" >/dev/null 2>&1 || true
    done' || { umount "$ROOT/proc"; exit 1; }
  umount "$ROOT/proc"
fi
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR" \
  > "$ROOT/etc/apt/sources.list"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "base image $TAG built from Debian bookworm ($(du -sh "$ROOT" | cut -f1))"
