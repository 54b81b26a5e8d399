#!/usr/bin/env bash
# A Docker engine for the docker-marked tests (pytest -m docker), on a CI machine or a bare VM.
#
#   .ci/docker.sh          install Debian's docker.io when dockerd is missing, then start dockerd
#                          in the background unless a daemon already answers (safe to call twice)
#   .ci/docker.sh stop     stop the dockerd this script started (and only that one)
#   .ci/docker.sh status   say whether a daemon answers
#
# Runs as root. The daemon is started without iptables, bridge or overlayfs (--storage-driver=vfs),
# so it works inside VMs and containers that lack those; containers then use host networking,
# which is what llama-pilot's Docker backend asks for. Nothing is ever pulled: the tests build
# their image locally (mcp_server.runtime.docker_image.build_local_image).
#
# Environment: LLAMA_PILOT_DOCKERD_DIR (default /var/run/llama-pilot-dockerd) holds the pid file
# and dockerd.log; LLAMA_PILOT_DOCKERD_WAIT (default 60) is how long to wait for `docker info`.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

STATE_DIR="${LLAMA_PILOT_DOCKERD_DIR:-/var/run/llama-pilot-dockerd}"
PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"
WAIT_S="${LLAMA_PILOT_DOCKERD_WAIT:-60}"

say() { printf 'docker.sh: %s\n' "$*" >&2; }

answers() { docker info >/dev/null 2>&1; }

our_pid() {
  # The pid from our pid file, only while that process is still a dockerd.
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "dockerd" ] || return 1
  echo "$pid"
}

install() {
  if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "dockerd is not installed and this is not root: install docker.io (or Docker Engine) first"
    exit 1
  fi
  say "installing docker.io (apt-get)"
  apt-get update -qq
  # policy-rc.d: no init system to start a service from the package's postinst; we start it below.
  apt-get install -y -qq --no-install-recommends docker.io
  command -v dockerd >/dev/null 2>&1 || { say "docker.io installed no dockerd"; exit 1; }
}

start() {
  install
  if answers; then
    say "a Docker daemon already answers: $(docker info --format '{{.ServerVersion}} ({{.Driver}})' 2>/dev/null || echo '?')"
    return 0
  fi
  if pid="$(our_pid)"; then
    say "dockerd $pid (started earlier) is still coming up; waiting"
  else
    mkdir -p "$STATE_DIR"
    say "starting dockerd (log: $LOG_FILE)"
    # setsid: the daemon outlives this script and is not hit by the caller's Ctrl-C.
    setsid dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
      >>"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    pid=$!
  fi
  local waited=0
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "dockerd exited during startup; last lines of $LOG_FILE:"
      tail -n 30 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    if [ "$waited" -ge "$WAIT_S" ]; then
      say "dockerd did not answer within ${WAIT_S}s; last lines of $LOG_FILE:"
      tail -n 30 "$LOG_FILE" >&2 || true
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  say "dockerd $pid answers after ${waited}s"
}

stop() {
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$PID_FILE"
    say "no dockerd started by this script is running"
    return 0
  fi
  say "stopping dockerd $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "dockerd $pid did not stop within 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status)
    if answers; then say "a Docker daemon answers"; else say "no Docker daemon answers"; exit 1; fi ;;
  *) say "usage: $0 [start|stop|status]"; exit 2 ;;
esac
