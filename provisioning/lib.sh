#!/usr/bin/env bash
# Shared helpers for the provisioning scripts: logging, versions.env lookup, os-release parsing.
# Sourced, never run. Everything here is a function or a readonly constant; nothing runs on source.
# shellcheck shell=bash
# The constants below are used by the scripts that source this file.
# shellcheck disable=SC2034

# The sourcing script's name, for log lines.
PROV_SCRIPT="$(basename -- "$0" .sh)"
readonly PROV_SCRIPT
# Pinned versions (SURVIVAL_VERSIONS_ENV overrides, for tests).
readonly PROV_VERSIONS_ENV="${SURVIVAL_VERSIONS_ENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/versions.env}"

# Named exit codes shared by the provisioning scripts.
readonly PROV_EXIT_USAGE=2
readonly PROV_EXIT_UNSUPPORTED_OS=3
readonly PROV_EXIT_CHECKSUM=4
readonly PROV_EXIT_VERIFY=5

# prov::log LEVEL MESSAGE... : one timestamped line on stderr (and syslog when logger exists).
prov::log() {
  local level="$1"
  shift
  printf '%s %s[%s] %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${PROV_SCRIPT}" "$$" "${level}" "$*" >&2
  if [[ "${PROV_SYSLOG:-0}" == 1 ]] && command -v logger >/dev/null 2>&1; then
    logger -t "${PROV_SCRIPT}" -- "${level}: $*" || true
  fi
}

prov::info() { prov::log INFO "$@"; }
prov::warn() { prov::log WARN "$@"; }

# prov::die CODE MESSAGE... : log an error and exit with CODE.
prov::die() {
  local code="$1"
  shift
  prov::log ERROR "$@"
  exit "${code}"
}

# prov::kv_get FILE KEY : print the value of KEY=VALUE in FILE (no shell evaluation of FILE).
prov::kv_get() {
  local file="$1" key="$2" line
  while IFS= read -r line || [[ -n "${line}" ]]; do
    line="${line%$'\r'}"
    [[ "${line}" == "${key}="* ]] || continue
    line="${line#"${key}="}"
    # os-release values may be quoted.
    line="${line#\"}"
    line="${line%\"}"
    printf '%s\n' "${line}"
    return 0
  done <"${file}"
  return 1
}

# prov::version KEY : a pinned value from versions.env (PROV_VERSIONS_ENV overrides the file).
prov::version() {
  local key="$1" value
  if ! value="$(prov::kv_get "${PROV_VERSIONS_ENV}" "${key}")" || [[ -z "${value}" ]]; then
    prov::die "${PROV_EXIT_USAGE}" "${key} is missing from ${PROV_VERSIONS_ENV}; add it there"
  fi
  printf '%s\n' "${value}"
}

# Names of files that must never be captured in an image (find -name patterns): SSH host and user
# private keys, the build user's authorized_keys, shell/REPL histories, and cloud/git credentials.
readonly PROV_SECRET_NAMES=(
  'ssh_host_*_key' 'authorized_keys' 'authorized_keys2'
  'id_rsa' 'id_dsa' 'id_ecdsa' 'id_ed25519' 'id_ecdsa_sk' 'id_ed25519_sk'
  '.bash_history' '.zsh_history' '.python_history' '.lesshst' '.viminfo' '.mysql_history' '.psql_history'
  'application_default_credentials.json' 'credentials.db' 'access_tokens.db' 'legacy_credentials'
  '.boto' '.git-credentials' '.netrc'
)
# A line that is exactly a PEM private-key header marks a private key, whatever the file is called.
readonly PROV_PRIVATE_KEY_RE='^-----BEGIN ([A-Z0-9]+ )?PRIVATE KEY-----[[:space:]]*$'
# Service-account key files are JSON with a "private_key" member (only *.json files are checked:
# client libraries mention the member in their source).
readonly PROV_SA_KEY_RE='"private_key"[[:space:]]*:'
# Content scans skip files this large (models, wheels, libraries): keys are small.
readonly PROV_SCAN_MAX_SIZE='-1024k'

# prov::find_secrets_by_name ROOT : NUL-separated paths whose name marks a secret (/proc, /sys, /dev, /run skipped).
prov::find_secrets_by_name() {
  local root="$1" name
  local -a expr=()
  for name in "${PROV_SECRET_NAMES[@]}"; do
    ((${#expr[@]} > 0)) && expr+=(-o)
    expr+=(-name "${name}")
  done
  find "${root}" -xdev \( -path "${root%/}/proc" -o -path "${root%/}/sys" -o -path "${root%/}/dev" -o -path "${root%/}/run" \) -prune \
    -o \( "${expr[@]}" \) -print0
}

# prov::find_secrets_by_content ROOT : NUL-separated regular files holding a private key: a PEM
# private-key block in any file, or a service-account key ("private_key" member) in a *.json file.
prov::find_secrets_by_content() {
  local root="$1" rc=0
  local -a prune=(\( -path "${root%/}/proc" -o -path "${root%/}/sys" -o -path "${root%/}/dev" -o -path "${root%/}/run" \) -prune)
  {
    find "${root}" -xdev "${prune[@]}" -o -type f -size "${PROV_SCAN_MAX_SIZE}" -print0 |
      xargs -0 -r grep -l -Z -I -s -E -e "${PROV_PRIVATE_KEY_RE}" -- || rc=$?
    # grep exits 1 when nothing matched (xargs then says 123): that is the good case.
    ((rc == 0 || rc == 123)) || return "${rc}"
    find "${root}" -xdev "${prune[@]}" -o -type f -name '*.json' -size "${PROV_SCAN_MAX_SIZE}" -print0 |
      xargs -0 -r grep -l -Z -I -s -E -e "${PROV_SA_KEY_RE}" -- || rc=$?
    ((rc == 0 || rc == 123)) || return "${rc}"
  }
}

# prov::find_secrets ROOT : every secret file or directory under ROOT, one per line (NUL-separated).
prov::find_secrets() {
  local root="$1"
  { prov::find_secrets_by_name "${root}"; prov::find_secrets_by_content "${root}"; } | sort -z -u
}
