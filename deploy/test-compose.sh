#!/usr/bin/env bash
# Proves that `docker compose up` trains and explains: a private Docker engine,
# a base image built locally, MinIO swapped for a local S3 server (no registry
# is reachable), 2 rounds with 2 trainers and 3 explainer replicas on the given
# MNIST folder, one replica killed mid-run, then checks from the host through the
# published ports, and everything torn down.
#
#   deploy/test-compose.sh MNIST_DIR        (as root; installs docker.io, docker-compose, debootstrap)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mnist=$(realpath "${1:?usage: $0 MNIST_DIR}")
python=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d /tmp/fedxai-compose.XXXXXX)
project=fedxai-compose-test
started=$SECONDS

log() { printf '[compose-test %4ds] %s\n' $((SECONDS - started)) "$*"; }
compose() {
  docker-compose -p "$project" -f "$repo/deploy/docker-compose.yml" \
    -f "$repo/deploy/test/docker-compose.test.yml" "$@"
}
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# FIRST-LAST: three consecutive free ports, for the explainer's replicas.
free_port_range() {
  "$python" - <<'PY'
import socket
for first in range(42000, 60000, 3):
    try:
        sockets = [socket.create_server(("127.0.0.1", first + i)) for i in range(3)]
    except OSError:
        continue
    for s in sockets:
        s.close()
    print(f"{first}-{first + 2}")
    break
PY
}
# How many calls each explainer replica answered, from its log: "CONTAINER COUNT" lines.
calls_per_replica() {
  for id in $(compose ps -q explainer); do
    printf '%s %s\n' "${id:0:12}" "$(docker logs "$id" 2>&1 | grep -c ' explained ' || true)"
  done
}

cleanup() {
  local status=$?
  set +e
  if [ -S "$work/docker.sock" ]; then
    [ "$status" -ne 0 ] && compose logs --no-color --tail 40
    compose down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1
  fi
  [ -n "${index_pid:-}" ] && kill "$index_pid" 2>/dev/null
  if [ -f "$work/dockerd.pid" ]; then
    kill "$(cat "$work/dockerd.pid")" 2>/dev/null
    for _ in $(seq 60); do [ -e "$work/dockerd.pid" ] || break; sleep 1; done
  fi
  # dockerd can leave mounts (network namespaces, layers) under its roots.
  awk -v root="$work" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf "$work"
  log "finished with status $status"
  exit "$status"
}
trap cleanup EXIT

if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing docker.io, docker-compose and debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi

log "starting a private Docker engine in $work"
dockerd --data-root "$work/data" --exec-root "$work/exec" -H "unix://$work/docker.sock" \
  --iptables=false --ip6tables=false --bridge=none --pidfile "$work/dockerd.pid" >"$work/dockerd.log" 2>&1 &
export DOCKER_HOST="unix://$work/docker.sock"
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null

log "building the base image with debootstrap"
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || echo http://deb.debian.org/debian)
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1
# pip inside the builds trusts what this machine trusts.
cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
tar -C "$work/rootfs" -c . | docker import - fedxai-base:bookworm >/dev/null
docker tag fedxai-base:bookworm python:3.11-slim-bookworm
rm -rf "$work/rootfs"

log "serving torch wheels as a package index"
"$python" -m pip download --quiet torch==2.14.1 torchvision==0.29.1 -d "$work/index/files" 2>/dev/null
"$python" - "$work/index" <<'PY'
import re, sys
from pathlib import Path
root = Path(sys.argv[1])
projects = {}
for wheel in sorted((root / "files").iterdir()):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    projects.setdefault(name, []).append(wheel.name)
for name, files in projects.items():
    page = root / "simple" / name / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("".join(f'<a href="../../files/{f}">{f}</a><br>\n' for f in files))
PY
index_port=$(free_port)
"$python" -m http.server "$index_port" --bind 127.0.0.1 --directory "$work/index" >/dev/null 2>&1 &
index_pid=$!
export TORCH_INDEX_URL="http://127.0.0.1:$index_port/simple"

export MNIST_DIR="$mnist" FEDXAI_ROUNDS=2
export EXPLAINER_PORTS=$(free_port_range) MONITOR_PORT=$(free_port) MINIO_API_PORT=$(free_port) MINIO_CONSOLE_PORT=$(free_port)
log "building the images"
compose build >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -v '^<none>'

log "docker compose up (2 rounds, 2 trainers, 3 explainer replicas)"
compose up -d --scale explainer=3
aggregator=$(compose ps -q aggregator)
# The replica that answers the first call is killed (SIGKILL, as a crash) right after;
# compose restarts it, and the calls it would have had go to the others meanwhile.
victim=""
for _ in $(seq 1200); do
  [ "$(docker inspect -f '{{.State.Status}}' "$aggregator")" = exited ] && break
  if [ -z "$victim" ]; then
    # awk reads to the end: a reader that stops early would fail the pipeline.
    victim=$(calls_per_replica | awk '$2 > 0 && !found {found = $1} END {print found}')
    if [ -n "$victim" ]; then
      log "killing explainer replica $victim, which answered the first call"
      kill -KILL "$(docker inspect -f '{{.State.Pid}}' "$victim")"
    fi
  fi
  sleep 1
done
compose logs --no-color aggregator | tail -20
[ "$(docker inspect -f '{{.State.Status}}' "$aggregator")" = exited ] || { log "the run did not finish in time"; exit 1; }
code=$(docker inspect -f '{{.State.ExitCode}}' "$aggregator")
[ "$code" = 0 ] || { log "the aggregator exited with $code"; exit 1; }

log "calls answered per explainer replica (container, calls):"
calls_per_replica | tee "$work/calls"
[ -n "$victim" ] || { log "no replica answered a call before the run ended"; exit 1; }
restarts=$(docker inspect -f '{{.RestartCount}} {{.State.Status}}' "$victim")
log "the killed replica: restarted $restarts"
[ "${restarts% *}" -gt 0 ] && [ "${restarts#* }" = running ] || { log "the killed replica was not restarted"; exit 1; }
[ "$(awk '$2 > 0' "$work/calls" | wc -l)" -ge 2 ] || { log "the calls were not shared between replicas"; exit 1; }

# `fedxai trainer` forked every ClientApp, each once its message was in: a train message a
# round (round 2's evaluates round 1's model first), then one that evaluates round 2's.
for trainer in trainer-0 trainer-1; do
  launched=$(compose logs --no-color "$trainer" | grep -c 'ClientApp in process' || true)
  log "$trainer: $launched ClientApps launched warm"
  [ "$launched" -ge 3 ] || { log "$trainer did not launch its ClientApps itself"; exit 1; }
  ! compose logs --no-color "$trainer" | grep 'did not say it holds the message' || { log "$trainer missed a message"; exit 1; }
done

log "checking the bucket, the explainer, its presigned URLs and the monitor from the host"
explainer_port=$(compose port --index 1 explainer 50051 | cut -d: -f2)
mkdir -m 700 "$work/credentials"
for name in reader.token operator.token monitor.password; do
  compose exec -T explainer cat "/credentials/$name" >"$work/credentials/$name"
done
"$python" "$repo/deploy/test/check_deployment.py" --s3 "127.0.0.1:$MINIO_API_PORT" \
  --explainer "127.0.0.1:$explainer_port" --monitor "127.0.0.1:$MONITOR_PORT" --rounds 2 --clients 2 \
  --credentials "$work/credentials"
log "the compose deployment works"
