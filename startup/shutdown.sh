#!/usr/bin/env bash
# shutdown.sh: the training VM's shutdown script (metadata key shutdown-script), run as root by the
# guest agent when the VM stops: preemption, host maintenance, `instances.stop`/`delete`, or a
# guest-initiated power-off. Spot/preemptible VMs get about 30 s in all.
#
# It forwards the shutdown to the trainer (SIGTERM to the pid startup.sh recorded; the trainer
# saves a notice checkpoint and exits 75) and waits for it to finish inside the window. The
# trainer also watches instance/preempted itself; this script is the second, independent path.
set -euo pipefail

readonly SHUTDOWN_ROOT="${LOCALGCE_ROOT:-}"
readonly SHUTDOWN_PID_FILE="${SHUTDOWN_ROOT}/run/survival/trainer.pid"
readonly SHUTDOWN_LOG_FILE="${SHUTDOWN_ROOT}/var/log/survival/startup.log"
# Leave a margin inside the 30 s Spot window for the guest to finish powering off.
readonly SHUTDOWN_WAIT_SECONDS=25
readonly SHUTDOWN_POLL_SECONDS=0.2

shutdown::log() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) survival-shutdown: $*"
  printf '%s\n' "${line}" >&2
  printf '%s\n' "${line}" >>"${SHUTDOWN_LOG_FILE}" 2>/dev/null || true
}

# shutdown::trainer_pid : the running trainer's pid, or nothing.
shutdown::trainer_pid() {
  local pid
  [[ -f "${SHUTDOWN_PID_FILE}" ]] || return 0
  pid="$(head -c 20 "${SHUTDOWN_PID_FILE}")"
  if [[ "${pid}" =~ ^[1-9][0-9]{0,9}$ ]] && kill -0 "${pid}" 2>/dev/null; then
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
  while kill -0 "${pid}" 2>/dev/null; do
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
