#!/usr/bin/env bash
# shutdown.sh: the training VM's shutdown script (metadata key shutdown-script), run as root by the
# guest agent when the VM stops: preemption, host maintenance, `instances.stop`/`delete`, or a
# guest-initiated power-off. Spot/preemptible VMs get about 30 s in all.
#
# It forwards the shutdown to the trainer (SIGTERM to the pid startup.sh recorded in
# run/survival/trainer.pid; the trainer saves a notice checkpoint and exits 75) and waits for it
# to finish inside the window. On current guest agents the startup-scripts unit runs with
# KillMode=process, so startup.sh's own TERM trap may never fire: this pid-file path is what
# delivers SIGTERM to the trainer. The trainer also watches instance/preempted itself.
#
# Usage: shutdown.sh [WAIT_SECONDS]   (default SHUTDOWN_WAIT_SECONDS; tests pass a shorter wait)
set -euo pipefail

readonly SHUTDOWN_ROOT="${LOCALGCE_ROOT:-}"
readonly SHUTDOWN_PID_FILE="${SHUTDOWN_ROOT}/run/survival/trainer.pid"
readonly SHUTDOWN_LOG_FILE="${SHUTDOWN_ROOT}/var/log/survival/startup.log"
# Spot/preemptible VMs get 30 s from the soft-off to the hard power-off, and that window also
# covers the script runner starting this script and systemd stopping the other units after it.
# Wait at most 20 s for the trainer, leaving about 10 s of margin.
readonly SHUTDOWN_WAIT_SECONDS=20
readonly SHUTDOWN_POLL_SECONDS=0.2

shutdown::log() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) survival-shutdown: $*"
  printf '%s\n' "${line}" >&2
  printf '%s\n' "${line}" >>"${SHUTDOWN_LOG_FILE}" 2>/dev/null || true
}

# shutdown::alive PID : true while PID runs. A process that has exited but whose parent has not
# reaped it yet (a zombie, state Z in /proc/PID/stat) has stopped: kill -0 alone still finds it.
shutdown::alive() {
  local pid="$1" stat=""
  kill -0 "${pid}" 2>/dev/null || return 1
  stat="$(cat "/proc/${pid}/stat" 2>/dev/null || true)"
  # Field 3, after the parenthesised command name (which may itself hold spaces or parentheses).
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# shutdown::trainer_pid : the running trainer's pid, or nothing.
shutdown::trainer_pid() {
  local pid
  [[ -f "${SHUTDOWN_PID_FILE}" ]] || return 0
  pid="$(head -c 20 "${SHUTDOWN_PID_FILE}")"
  if [[ "${pid}" =~ ^[1-9][0-9]{0,9}$ ]] && shutdown::alive "${pid}"; then
    printf '%s\n' "${pid}"
  fi
}

shutdown::main() {
  local wait_seconds="${1:-${SHUTDOWN_WAIT_SECONDS}}" pid deadline
  if [[ ! "${wait_seconds}" =~ ^[0-9]{1,4}$ ]]; then
    shutdown::log "bad wait seconds ${wait_seconds}; using ${SHUTDOWN_WAIT_SECONDS}"
    wait_seconds="${SHUTDOWN_WAIT_SECONDS}"
  fi
  pid="$(shutdown::trainer_pid)"
  if [[ -z "${pid}" ]]; then
    shutdown::log "no trainer running; nothing to save"
    return 0
  fi
  shutdown::log "shutdown: asking trainer ${pid} to save a notice checkpoint"
  kill -TERM "${pid}" 2>/dev/null || true
  deadline=$((SECONDS + wait_seconds))
  while shutdown::alive "${pid}"; do
    if ((SECONDS >= deadline)); then
      shutdown::log "trainer ${pid} still running after ${wait_seconds}s; the VM stops anyway"
      return 0
    fi
    sleep "${SHUTDOWN_POLL_SECONDS}"
  done
  shutdown::log "trainer ${pid} stopped; its notice checkpoint is saved"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  shutdown::main "$@"
fi
