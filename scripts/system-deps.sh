#!/usr/bin/env bash
# Installs the OS tools the kit's tests and tasks drive: packer (Debian's 1.6.6), shellcheck,
# openssh-server (localgce's per-instance sshd), git, curl and python3-venv (the OS Python that
# local image environments are built on, as on a real image). Does nothing when all are present.
set -euo pipefail

readonly SYSDEPS_PACKAGES=(packer shellcheck openssh-server openssh-client git curl python3-venv)

sysdeps::missing() {
  local missing=() pkg
  for pkg in "${SYSDEPS_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed' || missing+=("${pkg}")
  done
  printf '%s\n' "${missing[@]}"
}

sysdeps::main() {
  local -a missing
  mapfile -t missing < <(sysdeps::missing | sed '/^$/d')
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  local sudo=()
  if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "system-deps: missing ${missing[*]}; run as root: apt-get install -y ${missing[*]}" >&2
      return 1
    fi
  fi
  echo "system-deps: installing ${missing[*]}" >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  sysdeps::main "$@"
fi
