#!/usr/bin/env bash
# Prepares the guest OS for training: the base packages the environment needs (Python 3.11 venv,
# curl, git), the unprivileged trainer user, the log directory, and what reaches the serial
# console (what `invoke watch` shows). The guest agent's script runner already writes every
# startup- and shutdown-script line (the trainer's output included) to the console, so the journal
# is NOT forwarded wholesale (that showed each line twice); a small unit copies only the journal
# lines the runner does not write: the kit's own `survival` syslog tag and systemd-coredump.
#
# Usage: guest-setup.sh [--root DIR] [--user NAME]
#   --root DIR    apply file changes under DIR instead of / (tests; packages and the user are then
#                 skipped, since they need the real system)
#   --user NAME   the unprivileged user startup.sh runs the trainer as (default survival)
# Idempotent: every step checks before it changes anything.
set -euo pipefail

PROV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROV_DIR
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${PROV_DIR}/lib.sh"

readonly GUEST_LOG_DIR="var/log/survival"
readonly GUEST_JOURNALD_DROPIN="etc/systemd/journald.conf.d/90-survival.conf"
readonly GUEST_CONSOLE_UNIT="survival-console.service"
readonly GUEST_UNIT_DIR="etc/systemd/system"
readonly GUEST_CONSOLE_TTY="/dev/ttyS0"
# Journal identifiers copied to the console: lines nothing else puts there. Never the script
# runner's (google_metadata_script_runner, gce_metadata_script_runner), which it writes to the
# console itself, and never the kernel's, which the kernel prints there itself.
readonly GUEST_CONSOLE_IDENTIFIERS=(survival systemd-coredump)

guest::usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

guest::packages() {
  local -a packages=(ca-certificates curl git)
  local os_id
  os_id="$(prov::kv_get "${SURVIVAL_OS_RELEASE:-/etc/os-release}" ID || true)"
  # Ubuntu 22.04's python3 is 3.10; the pinned numpy/scikit-learn need 3.11, which jammy ships as python3.11.
  if [[ "${os_id}" == "ubuntu" ]]; then
    packages+=(python3.11 python3.11-venv)
  else
    packages+=(python3 python3-venv)
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
}

guest::user() {
  local user="$1"
  if id -u "${user}" >/dev/null 2>&1; then
    prov::info "user ${user} exists"
    return 0
  fi
  useradd --system --create-home --shell /usr/sbin/nologin "${user}"
  prov::info "created user ${user}"
}

guest::log_dir() {
  local root="$1" user="$2" dir="${1%/}/${GUEST_LOG_DIR}"
  mkdir -p "${dir}"
  chmod 0755 "${dir}"
  if [[ "${root}" == "/" ]]; then
    chown "${user}:${user}" "${dir}"
  fi
}

guest::journald() {
  local root="$1" file="${1%/}/${GUEST_JOURNALD_DROPIN}"
  mkdir -p "$(dirname "${file}")"
  # Written whole each time (never appended), so a re-run leaves the same file.
  cat >"${file}" <<'CONF'
# GCE Survival Kit: the journal is not copied to the serial console as a whole. The script runner
# already writes startup- and shutdown-script output there; survival-console.service copies the
# few other lines worth seeing.
[Journal]
ForwardToConsole=no
CONF
}

# guest::console_unit ROOT : the unit that follows the journal for GUEST_CONSOLE_IDENTIFIERS only
# (journalctl ORs matches on the same field) and writes those lines to the serial console.
guest::console_unit() {
  local root="$1" unit_dir="${1%/}/${GUEST_UNIT_DIR}" id
  local -a matches=()
  for id in "${GUEST_CONSOLE_IDENTIFIERS[@]}"; do
    matches+=("SYSLOG_IDENTIFIER=${id}")
  done
  mkdir -p "${unit_dir}/multi-user.target.wants"
  cat >"${unit_dir}/${GUEST_CONSOLE_UNIT}" <<UNIT
# GCE Survival Kit: journal lines the script runner does not write to the serial console.
[Unit]
Description=Copy the GCE Survival Kit's own journal lines to ${GUEST_CONSOLE_TTY}
After=systemd-journald.service

[Service]
ExecStart=/usr/bin/journalctl --follow --lines=0 --output=short-iso ${matches[*]}
StandardInput=null
StandardOutput=tty
StandardError=journal
TTYPath=${GUEST_CONSOLE_TTY}
TTYReset=no
TTYVHangup=no
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
  ln -sfn "/${GUEST_UNIT_DIR}/${GUEST_CONSOLE_UNIT}" "${unit_dir}/multi-user.target.wants/${GUEST_CONSOLE_UNIT}"
  if [[ "${root}" == "/" ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    systemctl restart systemd-journald
    systemctl restart "${GUEST_CONSOLE_UNIT}"
  fi
}

guest::main() {
  local root="/" user="survival"
  while (($# > 0)); do
    case "$1" in
      --root | --user)
        (($# >= 2)) || prov::die "${PROV_EXIT_USAGE}" "$1 needs a value; run with --help"
        [[ "$1" == --root ]] && root="$2"
        [[ "$1" == --user ]] && user="$2"
        shift 2
        ;;
      -h | --help)
        guest::usage
        return 0
        ;;
      *) prov::die "${PROV_EXIT_USAGE}" "unknown argument '$1'; run with --help" ;;
    esac
  done
  [[ "${user}" =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || prov::die "${PROV_EXIT_USAGE}" "--user '${user}' is not a valid user name"
  [[ -d "${root}" ]] || prov::die "${PROV_EXIT_USAGE}" "--root ${root} is not a directory"
  if [[ "${root}" == "/" ]]; then
    guest::packages
    guest::user "${user}"
  else
    prov::info "--root ${root}: skipping packages and user creation"
  fi
  guest::log_dir "${root}" "${user}"
  guest::journald "${root}"
  guest::console_unit "${root}"
  prov::info "guest setup done"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  guest::main "$@"
fi
