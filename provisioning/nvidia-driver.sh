#!/usr/bin/env bash
# Installs the pinned NVIDIA driver branch and CUDA toolkit from NVIDIA's apt repository on
# Debian 12 or Ubuntu 22.04, verified against the pinned SHA-256 and key fingerprint in versions.env.
#
# Usage: nvidia-driver.sh [--plan]
#   --plan   print the OS, the pinned versions and checksums and which steps would run; change nothing.
#
# Each finished step leaves a marker in the marker directory, so a re-run (after a reboot or a bake
# interrupted by preemption) skips finished work; with every marker present it does nothing.
#
# Environment (for tests and unusual hosts):
#   SURVIVAL_OS_RELEASE     os-release file to read (default /etc/os-release)
#   SURVIVAL_MARKER_DIR     where step markers live (default /var/lib/survival/provisioning)
#   SURVIVAL_VERSIONS_ENV   pinned versions file (default: versions.env beside this script)
set -euo pipefail

PROV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROV_DIR
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${PROV_DIR}/lib.sh"

readonly NVD_OS_RELEASE="${SURVIVAL_OS_RELEASE:-/etc/os-release}"
readonly NVD_MARKER_DIR="${SURVIVAL_MARKER_DIR:-/var/lib/survival/provisioning}"
readonly NVD_REPO_BASE="https://developer.download.nvidia.com/compute/cuda/repos"
readonly NVD_KEYRING_FILE="/usr/share/keyrings/cuda-archive-keyring.gpg"
# Steps in order; each has a function nvd::step_<name> and a marker <name>.done.
readonly NVD_STEPS=(repo kernel-hold headers driver cuda verify)

# Filled by nvd::detect_os.
NVD_OS_ID=""
NVD_OS_VERSION=""
NVD_REPO_DIR=""
NVD_KEYRING_SHA256=""
NVD_KERNEL_PACKAGES=()

nvd::usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# nvd::detect_os : read os-release (parsed, never sourced) and pick the repository and checksum.
nvd::detect_os() {
  [[ -r "${NVD_OS_RELEASE}" ]] || prov::die "${PROV_EXIT_UNSUPPORTED_OS}" \
    "unsupported OS: cannot read ${NVD_OS_RELEASE}; this script supports Debian 12 and Ubuntu 22.04"
  NVD_OS_ID="$(prov::kv_get "${NVD_OS_RELEASE}" ID || true)"
  NVD_OS_VERSION="$(prov::kv_get "${NVD_OS_RELEASE}" VERSION_ID || true)"
  case "${NVD_OS_ID}:${NVD_OS_VERSION}" in
    debian:12)
      NVD_REPO_DIR="debian12"
      NVD_KEYRING_SHA256="$(prov::version CUDA_KEYRING_SHA256_DEBIAN12)"
      NVD_KERNEL_PACKAGES=(linux-image-cloud-amd64 linux-headers-cloud-amd64)
      ;;
    ubuntu:22.04)
      NVD_REPO_DIR="ubuntu2204"
      NVD_KEYRING_SHA256="$(prov::version CUDA_KEYRING_SHA256_UBUNTU2204)"
      NVD_KERNEL_PACKAGES=(linux-gcp linux-image-gcp linux-headers-gcp)
      ;;
    *)
      prov::die "${PROV_EXIT_UNSUPPORTED_OS}" \
        "unsupported OS: '${NVD_OS_ID:-unknown} ${NVD_OS_VERSION:-?}' (from ${NVD_OS_RELEASE}); use a Debian 12 or Ubuntu 22.04 source image (--source-family debian-12 or ubuntu-2204-lts)"
      ;;
  esac
}

nvd::keyring_name() { printf 'cuda-keyring_%s_all.deb\n' "$(prov::version CUDA_KEYRING_VERSION)"; }
nvd::keyring_url() { printf '%s/%s/x86_64/%s\n' "${NVD_REPO_BASE}" "${NVD_REPO_DIR}" "$(nvd::keyring_name)"; }
nvd::cuda_package() { printf 'cuda-toolkit-%s\n' "$(prov::version CUDA_VERSION | tr . -)"; }
nvd::driver_package() { printf 'cuda-drivers-%s\n' "$(prov::version NVIDIA_DRIVER_BRANCH)"; }

nvd::marker() { printf '%s/%s.done\n' "${NVD_MARKER_DIR}" "$1"; }
nvd::is_done() { [[ -f "$(nvd::marker "$1")" ]]; }
nvd::mark_done() {
  mkdir -p "${NVD_MARKER_DIR}"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$(nvd::marker "$1")"
}

nvd::apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# repo: download the keyring package, check its SHA-256 and the key it installs, add the repository.
nvd::step_repo() {
  local tmp deb actual fingerprint
  tmp="$(mktemp -d)"
  # Removed by the EXIT trap set in nvd::main.
  NVD_TMP_DIRS+=("${tmp}")
  deb="${tmp}/$(nvd::keyring_name)"
  curl --fail --silent --show-error --location --retry 5 --output "${deb}" "$(nvd::keyring_url)"
  actual="$(sha256sum "${deb}" | cut -d' ' -f1)"
  if [[ "${actual}" != "${NVD_KEYRING_SHA256}" ]]; then
    prov::die "${PROV_EXIT_CHECKSUM}" \
      "checksum mismatch for $(nvd::keyring_url): got ${actual}, pinned ${NVD_KEYRING_SHA256}; check NVIDIA's published sum and update provisioning/versions.env"
  fi
  dpkg -i "${deb}"
  fingerprint="$(gpg --show-keys --with-colons "${NVD_KEYRING_FILE}" | awk -F: '$1 == "fpr" {print $10; exit}')"
  if [[ "${fingerprint}" != "$(prov::version CUDA_REPO_KEY_FINGERPRINT)" ]]; then
    prov::die "${PROV_EXIT_CHECKSUM}" \
      "the CUDA repository key is ${fingerprint:-missing}, expected $(prov::version CUDA_REPO_KEY_FINGERPRINT); do not trust this repository"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q
}

# kernel-hold: unattended upgrades must not move the kernel away from the DKMS-built module.
nvd::step_kernel_hold() {
  local running pkg held=()
  running="linux-image-$(uname -r)"
  for pkg in "${running}" "${NVD_KERNEL_PACKAGES[@]}"; do
    if dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed'; then
      held+=("${pkg}")
    fi
  done
  ((${#held[@]} > 0)) && apt-mark hold "${held[@]}"
  return 0
}

nvd::step_headers() {
  nvd::apt_install "linux-headers-$(uname -r)" dkms build-essential
}

nvd::step_driver() {
  nvd::apt_install "$(nvd::driver_package)"
}

nvd::step_cuda() {
  nvd::apt_install "$(nvd::cuda_package)"
}

nvd::step_verify() {
  if ! nvidia-smi; then
    modprobe nvidia || true
    nvidia-smi || prov::die "${PROV_EXIT_VERIFY}" \
      "nvidia-smi fails after installing $(nvd::driver_package); is a GPU attached to the build VM (--gpu TYPE:COUNT)?"
  fi
}

nvd::plan() {
  local step state
  printf 'os: %s %s\n' "${NVD_OS_ID}" "${NVD_OS_VERSION}"
  printf 'driver: %s (branch %s)\n' "$(nvd::driver_package)" "$(prov::version NVIDIA_DRIVER_BRANCH)"
  printf 'cuda: %s (CUDA %s)\n' "$(nvd::cuda_package)" "$(prov::version CUDA_VERSION)"
  printf 'keyring: %s\n' "$(nvd::keyring_url)"
  printf 'keyring sha256: %s\n' "${NVD_KEYRING_SHA256}"
  printf 'repository key fingerprint: %s\n' "$(prov::version CUDA_REPO_KEY_FINGERPRINT)"
  printf 'held kernel packages: linux-image-<running kernel> %s\n' "${NVD_KERNEL_PACKAGES[*]}"
  printf 'markers: %s\n' "${NVD_MARKER_DIR}"
  for step in "${NVD_STEPS[@]}"; do
    state="run"
    nvd::is_done "${step}" && state="skip (done)"
    printf 'step %s: %s\n' "${step}" "${state}"
  done
}

NVD_TMP_DIRS=()
nvd::cleanup() {
  local dir
  for dir in "${NVD_TMP_DIRS[@]}"; do
    rm -rf -- "${dir}"
  done
}

nvd::main() {
  local plan=0
  while (($# > 0)); do
    case "$1" in
      --plan) plan=1 ;;
      -h | --help)
        nvd::usage
        return 0
        ;;
      *) prov::die "${PROV_EXIT_USAGE}" "unknown argument '$1'; run with --help" ;;
    esac
    shift
  done
  nvd::detect_os
  if ((plan)); then
    nvd::plan
    return 0
  fi
  trap nvd::cleanup EXIT
  local step pending=0
  for step in "${NVD_STEPS[@]}"; do
    nvd::is_done "${step}" || pending=1
  done
  if ((pending == 0)); then
    prov::info "every step is already done (markers in ${NVD_MARKER_DIR}); nothing to do"
    return 0
  fi
  for step in "${NVD_STEPS[@]}"; do
    if nvd::is_done "${step}"; then
      prov::info "step ${step}: already done, skipping"
      continue
    fi
    prov::info "step ${step}: running"
    "nvd::step_${step//-/_}"
    nvd::mark_done "${step}"
    prov::info "step ${step}: done"
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  nvd::main "$@"
fi
