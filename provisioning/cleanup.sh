#!/usr/bin/env bash
# Scrubs an image before capture: SSH host keys, the build user's authorized_keys, private keys,
# shell histories, cloud and git credentials, package caches, temporary files and the machine id.
# What counts as a secret is defined once in lib.sh and shared with verify.sh.
#
# Usage: cleanup.sh --root DIR
#   --root DIR   the tree to scrub: / on the build VM, the image directory for a local image.
#                Required, so the script never scrubs a machine by accident.
# Idempotent: a second run finds nothing to remove.
set -euo pipefail

PROV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROV_DIR
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${PROV_DIR}/lib.sh"

# Caches and temporary files removed by glob under the root (contents only; the directories stay).
readonly CLEANUP_GLOBS=(
  'etc/ssh/ssh_host_*' 'var/cache/apt/archives/*.deb' 'var/cache/apt/*.bin' 'var/lib/apt/lists/*_*'
  'root/.cache/pip' 'home/*/.cache/pip' 'root/.cache/gcloud' 'home/*/.config/gcloud' 'root/.config/gcloud'
  'tmp/*' 'tmp/.[!.]*' 'var/tmp/*' 'var/tmp/.[!.]*'
)

cleanup::usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# cleanup::remove PATH : remove PATH; false when there was nothing to remove.
cleanup::remove() {
  local path="$1"
  [[ -e "${path}" || -L "${path}" ]] || return 1
  rm -rf -- "${path}"
  prov::info "removed ${path}"
}

cleanup::main() {
  local root=""
  while (($# > 0)); do
    case "$1" in
      --root)
        (($# >= 2)) || prov::die "${PROV_EXIT_USAGE}" "--root needs a value; run with --help"
        root="$2"
        shift 2
        ;;
      -h | --help)
        cleanup::usage
        return 0
        ;;
      *) prov::die "${PROV_EXIT_USAGE}" "unknown argument '$1'; run with --help" ;;
    esac
  done
  [[ -n "${root}" ]] || prov::die "${PROV_EXIT_USAGE}" "--root is required (/ on the build VM, the image directory for a local image)"
  [[ -d "${root}" ]] || prov::die "${PROV_EXIT_USAGE}" "--root ${root} is not a directory"
  root="$(cd "${root}" && pwd -P)"

  local path pattern removed=0
  while IFS= read -r -d '' path; do
    if cleanup::remove "${path}"; then removed=$((removed + 1)); fi
  done < <(prov::find_secrets "${root}")

  local -a matches
  for pattern in "${CLEANUP_GLOBS[@]}"; do
    # Unquoted on purpose: the glob is ours (readonly above), the root is quoted.
    shopt -s nullglob
    # shellcheck disable=SC2206
    matches=("${root%/}"/${pattern})
    shopt -u nullglob
    for path in "${matches[@]}"; do
      if cleanup::remove "${path}"; then removed=$((removed + 1)); fi
    done
  done

  # An empty machine-id makes systemd generate a fresh one on the first boot of each VM.
  if [[ -s "${root%/}/etc/machine-id" ]]; then
    : >"${root%/}/etc/machine-id"
    prov::info "emptied ${root%/}/etc/machine-id"
  fi
  prov::info "cleanup of ${root} done: ${removed} paths removed"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  cleanup::main "$@"
fi
