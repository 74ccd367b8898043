#!/usr/bin/env bash
# Prepares the guest OS for training: the base packages the environment needs (Python 3.11 venv,
# curl, git), the unprivileged trainer user, the log directory, and journald settings that forward
# startup-script output to the serial console (what `invoke watch` and the serial port show).
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
# GCE Survival Kit: startup-script and trainer output reach the serial console.
[Journal]
ForwardToConsole=yes
TTYPath=/dev/ttyS0
MaxLevelConsole=info
CONF
  if [[ "${root}" == "/" ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl restart systemd-journald
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
  prov::info "guest setup done"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  guest::main "$@"
fi
