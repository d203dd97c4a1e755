#!/usr/bin/env bash
# `make compose-demo`: the containers built and run for real.
#
#  1. a Docker engine: the running one, or (as root, where none runs) dockerd started here with
#     its data under $DOCKER_DATA_ROOT (default /tmp/gio-spark-docker) and stopped at the end;
#  2. the base image: $GIO_SPARK_BASE if set; else python:3.11-slim-bookworm if it is here or
#     can be pulled; else one made from Debian's packages by docker/base.sh;
#  3. the image (docker compose build), then the demo twice, into ./out on the host:
#     `local` (local[*] in one container) -> out/compose-local, and the cluster: spark-master,
#     spark-worker-1, spark-worker-2, then `submit` (spark-submit to the master) ->
#     out/compose-cluster;
#  4. the two outputs compared (python -m jobs.tools.cluster compare): the same run, selection and
#     selected rows, or exit 1. Everything started is stopped, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
COMPOSE_FILE=docker/docker-compose.yml
say() { echo "[compose-demo] $*"; }
elapsed() { local s=$(( $(date +%s) - START )); printf '%d min %02d s' $((s / 60)) $((s % 60)); }

DOCKERD_PID=""
cleanup() {
  local rc=$?
  if [ -n "${COMPOSE:-}" ]; then $COMPOSE -f "$COMPOSE_FILE" down --remove-orphans >/dev/null 2>&1 || true; fi
  if [ -n "$DOCKERD_PID" ]; then kill "$DOCKERD_PID" 2>/dev/null || true; wait "$DOCKERD_PID" 2>/dev/null || true; fi
  exit $rc
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
    DATA="${DOCKER_DATA_ROOT:-/tmp/gio-spark-docker}"
    mkdir -p "$DATA"
    say "starting dockerd (data under $DATA)"
    dockerd --data-root "$DATA" --pidfile "$DATA/dockerd.pid" >"$DATA/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start: see $DATA/dockerd.log" >&2; exit 1; }
  else
    echo "no Docker engine answers: start one (dockerd) or run as root where dockerd is installed" >&2
    exit 2
  fi
fi
if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
elif command -v docker-compose >/dev/null; then COMPOSE="docker-compose"
else echo "neither 'docker compose' nor docker-compose is installed" >&2; exit 2; fi

if [ -z "${GIO_SPARK_BASE:-}" ]; then
  if docker image inspect python:3.11-slim-bookworm >/dev/null 2>&1 \
     || timeout 60 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    GIO_SPARK_BASE=python:3.11-slim-bookworm
  else
    say "Docker Hub cannot be reached: building the base from Debian's packages (docker/base.sh)"
    docker/base.sh gio-spark-base:bookworm
    GIO_SPARK_BASE=gio-spark-base:bookworm
  fi
fi
export GIO_SPARK_BASE
say "building gio-spark:latest on $GIO_SPARK_BASE"
$COMPOSE -f "$COMPOSE_FILE" build --quiet 2>&1 | grep -v "^$" || true
docker image inspect gio-spark:latest >/dev/null

mkdir -p data out
rm -rf out/compose-local out/compose-cluster
say "local: the demo on local[*] in one container -> out/compose-local ($(elapsed))"
$COMPOSE -f "$COMPOSE_FILE" run --rm local
say "cluster: spark-master and two workers, then spark-submit -> out/compose-cluster ($(elapsed))"
$COMPOSE -f "$COMPOSE_FILE" up -d spark-master spark-worker-1 spark-worker-2
$COMPOSE -f "$COMPOSE_FILE" run --rm submit
say "comparing the two outputs ($(elapsed))"
$COMPOSE -f "$COMPOSE_FILE" run --rm --no-deps local \
  python -m jobs.tools.cluster compare /out/compose-local /out/compose-cluster
say "done in $(elapsed): the cluster's Delta output equals the local run's"
