#!/usr/bin/env bash
# Installs the NVIDIA driver (pinned branch) and CUDA toolkit from NVIDIA's apt repository on
# Debian 12 or Ubuntu 22.04, in two stages separated by a reboot, as Google's GPU installer does:
#   kernel stage  apt prerequisites (gpg, dkms, compilers), the newest kernel of the running series
#                 with its headers, then a reboot into that kernel
#   driver stage  the CUDA repository (keyring SHA-256 and key fingerprint checked), the driver
#                 (open kernel modules by default), the CUDA toolkit, a kernel hold, nvidia-smi
#
# Usage: nvidia-driver.sh [--stage kernel|driver|all] [--modules open|proprietary] [--plan]
#   --stage S    kernel: up to and including the reboot; driver: the rest (after the reboot);
#                all (default): every step that is not done yet, stopping at the reboot
#   --modules M  open (default: NVIDIA's open GPU kernel modules, package nvidia-open; needed for
#                Blackwell, recommended from Turing on) or proprietary (package cuda-drivers; the
#                only choice for Maxwell, Pascal and Volta GPUs such as P4, P100 and V100)
#   --plan       print the OS, the pinned versions and checksums and every step with what it runs,
#                in order; change nothing
#
# Each finished step leaves a marker in the marker directory, so a re-run (after the reboot or a
# bake interrupted by preemption) skips finished work; with every marker present it does nothing.
#
# Environment (for tests and unusual hosts):
#   SURVIVAL_OS_RELEASE      os-release file to read (default /etc/os-release)
#   SURVIVAL_MARKER_DIR      where step markers live (default /var/lib/survival/provisioning)
#   SURVIVAL_VERSIONS_ENV    pinned versions file (default: versions.env beside this script)
#   SURVIVAL_KERNEL_RELEASE  the running kernel release (default: uname -r)
#   SURVIVAL_BOOT_ID_FILE    this boot's id (default /proc/sys/kernel/random/boot_id)
set -euo pipefail

PROV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROV_DIR
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${PROV_DIR}/lib.sh"

readonly NVD_OS_RELEASE="${SURVIVAL_OS_RELEASE:-/etc/os-release}"
readonly NVD_MARKER_DIR="${SURVIVAL_MARKER_DIR:-/var/lib/survival/provisioning}"
readonly NVD_BOOT_ID_FILE="${SURVIVAL_BOOT_ID_FILE:-/proc/sys/kernel/random/boot_id}"
readonly NVD_REPO_BASE="https://developer.download.nvidia.com/compute/cuda/repos"
readonly NVD_KEYRING_FILE="/usr/share/keyrings/cuda-archive-keyring.gpg"
# Steps in order; each has a function nvd::step_<name> and a marker <name>.done.
readonly NVD_KERNEL_STAGE=(prerequisites kernel reboot)
readonly NVD_DRIVER_STAGE=(repo headers driver cuda kernel-hold verify)
readonly NVD_STEPS=("${NVD_KERNEL_STAGE[@]}" "${NVD_DRIVER_STAGE[@]}")
# Installed first: gpg checks the repository key's fingerprint; dkms and the compilers build the
# kernel module against the headers.
readonly NVD_PREREQUISITES=(gpg ca-certificates curl dkms build-essential pciutils)

# Filled by nvd::detect_os / nvd::detect_kernel.
NVD_OS_ID=""
NVD_OS_VERSION=""
NVD_REPO_DIR=""
NVD_KEYRING_SHA256=""
NVD_KERNEL_RELEASE=""
NVD_KERNEL_FLAVOUR=""
NVD_MODULES=""

nvd::usage() {
  sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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
      ;;
    ubuntu:22.04)
      NVD_REPO_DIR="ubuntu2204"
      NVD_KEYRING_SHA256="$(prov::version CUDA_KEYRING_SHA256_UBUNTU2204)"
      ;;
    *)
      prov::die "${PROV_EXIT_UNSUPPORTED_OS}" \
        "unsupported OS: '${NVD_OS_ID:-unknown} ${NVD_OS_VERSION:-?}' (from ${NVD_OS_RELEASE}); use a Debian 12 or Ubuntu 22.04 source image (--source-family debian-12 or ubuntu-2204-lts)"
      ;;
  esac
}

# nvd::detect_kernel : the running kernel release and its flavour (6.1.0-28-cloud-amd64 →
# cloud-amd64, 6.8.0-1019-gcp → gcp). The flavour names the metapackages that always depend on the
# newest kernel of the series: linux-image-<flavour>, linux-headers-<flavour>.
nvd::detect_kernel() {
  NVD_KERNEL_RELEASE="${SURVIVAL_KERNEL_RELEASE:-$(uname -r)}"
  if [[ "${NVD_KERNEL_RELEASE}" =~ ^[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-([a-z0-9][a-z0-9-]*)$ ]]; then
    NVD_KERNEL_FLAVOUR="${BASH_REMATCH[1]}"
  else
    # Not a distribution kernel: fall back to the flavour GCE's images of this OS boot.
    case "${NVD_OS_ID}" in
      debian) NVD_KERNEL_FLAVOUR="cloud-amd64" ;;
      *) NVD_KERNEL_FLAVOUR="gcp" ;;
    esac
    prov::warn "kernel ${NVD_KERNEL_RELEASE} has no distribution flavour; using linux-image-${NVD_KERNEL_FLAVOUR}"
  fi
}

nvd::kernel_packages() { printf '%s\n' "linux-image-${NVD_KERNEL_FLAVOUR}" "linux-headers-${NVD_KERNEL_FLAVOUR}"; }
nvd::keyring_name() { printf 'cuda-keyring_%s_all.deb\n' "$(prov::version CUDA_KEYRING_VERSION)"; }
nvd::keyring_url() { printf '%s/%s/x86_64/%s\n' "${NVD_REPO_BASE}" "${NVD_REPO_DIR}" "$(nvd::keyring_name)"; }
nvd::cuda_package() { printf 'cuda-toolkit-%s\n' "$(prov::version CUDA_VERSION | tr . -)"; }
# NVIDIA's repository pins a driver branch with a pinning package installed before the driver;
# the branch-named metapackages (cuda-drivers-<branch>) are being removed.
nvd::pinning_package() { printf 'nvidia-driver-pinning-%s\n' "$(prov::version NVIDIA_DRIVER_BRANCH)"; }
nvd::driver_package() {
  case "${NVD_MODULES}" in
    open) printf 'nvidia-open\n' ;;
    proprietary) printf 'cuda-drivers\n' ;;
  esac
}
nvd::boot_id() { head -c 64 "${NVD_BOOT_ID_FILE}"; }

nvd::marker() { printf '%s/%s.done\n' "${NVD_MARKER_DIR}" "$1"; }
nvd::is_done() { [[ -f "$(nvd::marker "$1")" ]]; }
nvd::mark_done() {
  mkdir -p "${NVD_MARKER_DIR}"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$(nvd::marker "$1")"
}

nvd::apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# nvd::describe STEP : one line saying what STEP runs (--plan and the log).
nvd::describe() {
  local -a kernel_packages
  mapfile -t kernel_packages < <(nvd::kernel_packages)
  case "$1" in
    prerequisites) printf 'apt-get install %s\n' "${NVD_PREREQUISITES[*]}" ;;
    kernel) printf 'apt-get install %s (the newest kernel of the running %s series and its headers)\n' \
      "${kernel_packages[*]}" "${NVD_KERNEL_FLAVOUR}" ;;
    reboot) printf 'systemctl reboot into the new kernel (the driver stage runs after it)\n' ;;
    repo) printf 'download %s, check sha256 %s, dpkg -i, check the key fingerprint %s with gpg, apt-get update\n' \
      "$(nvd::keyring_url)" "${NVD_KEYRING_SHA256}" "$(prov::version CUDA_REPO_KEY_FINGERPRINT)" ;;
    headers) printf 'apt-get install linux-headers-<running kernel> (after the reboot: the new kernel)\n' ;;
    driver) printf 'apt-get install %s, then %s (%s kernel modules)\n' \
      "$(nvd::pinning_package)" "$(nvd::driver_package)" "${NVD_MODULES}" ;;
    cuda) printf 'apt-get install %s\n' "$(nvd::cuda_package)" ;;
    kernel-hold) printf 'apt-mark hold linux-image-<running kernel> linux-headers-<running kernel> %s\n' \
      "${kernel_packages[*]}" ;;
    verify) printf 'nvidia-smi\n' ;;
  esac
}

# prerequisites: gpg before anything checks a key fingerprint; dkms and compilers for the module.
nvd::step_prerequisites() {
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  nvd::apt_install "${NVD_PREREQUISITES[@]}"
}

# kernel: the running kernel's own headers (linux-headers-$(uname -r)) leave the archive once a
# newer ABI is published, so install the series' newest kernel and headers through the metapackages.
nvd::step_kernel() {
  local -a packages
  mapfile -t packages < <(nvd::kernel_packages)
  nvd::apt_install "${packages[@]}"
}

# reboot: record this boot's id in the marker (the driver stage checks that a reboot happened),
# then reboot. Under Packer this provisioner has expect_disconnect = true.
nvd::step_reboot() {
  mkdir -p "${NVD_MARKER_DIR}"
  nvd::boot_id >"$(nvd::marker reboot)"
  prov::info "rebooting into the new kernel; run the driver stage after the reboot"
  systemctl reboot
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
  command -v gpg >/dev/null 2>&1 || prov::die "${PROV_EXIT_VERIFY}" \
    "gpg is missing, so the CUDA repository key cannot be checked; run the kernel stage (it installs gpg) first"
  fingerprint="$(gpg --show-keys --with-colons "${NVD_KEYRING_FILE}" | awk -F: '$1 == "fpr" {print $10; exit}')"
  if [[ "${fingerprint}" != "$(prov::version CUDA_REPO_KEY_FINGERPRINT)" ]]; then
    prov::die "${PROV_EXIT_CHECKSUM}" \
      "the CUDA repository key is ${fingerprint:-missing}, expected $(prov::version CUDA_REPO_KEY_FINGERPRINT); do not trust this repository"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q
}

# headers: after the reboot the running kernel is the newest, so its headers are in the archive
# (the kernel stage's metapackage normally installed them already).
nvd::step_headers() {
  nvd::apt_install "linux-headers-${NVD_KERNEL_RELEASE}"
}

nvd::step_driver() {
  nvd::apt_install "$(nvd::pinning_package)"
  nvd::apt_install "$(nvd::driver_package)"
}

nvd::step_cuda() {
  nvd::apt_install "$(nvd::cuda_package)"
}

# kernel-hold: unattended upgrades must not move the kernel away from the DKMS-built module.
nvd::step_kernel_hold() {
  local pkg held=() candidates=()
  mapfile -t candidates < <(nvd::kernel_packages)
  candidates+=("linux-image-${NVD_KERNEL_RELEASE}" "linux-headers-${NVD_KERNEL_RELEASE}")
  for pkg in "${candidates[@]}"; do
    if dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed'; then
      held+=("${pkg}")
    fi
  done
  ((${#held[@]} > 0)) && apt-mark hold "${held[@]}"
  return 0
}

nvd::step_verify() {
  if ! nvidia-smi; then
    modprobe nvidia || true
    nvidia-smi || prov::die "${PROV_EXIT_VERIFY}" \
      "nvidia-smi fails after installing $(nvd::driver_package) (${NVD_MODULES} kernel modules); is a GPU attached to the build VM (--gpu TYPE:COUNT), and does it support ${NVD_MODULES} modules (pre-Turing GPUs need --modules proprietary)?"
  fi
}

# nvd::check_rebooted : the driver stage needs the kernel stage's reboot behind it.
nvd::check_rebooted() {
  local before
  if ! nvd::is_done reboot; then
    prov::die "${PROV_EXIT_USAGE}" \
      "the kernel stage has not run (no $(nvd::marker reboot)); run nvidia-driver.sh --stage kernel first, then reboot"
  fi
  before="$(head -c 64 "$(nvd::marker reboot)")"
  if [[ "${before}" == "$(nvd::boot_id)" ]]; then
    prov::die "${PROV_EXIT_USAGE}" \
      "still on the boot that installed the new kernel; reboot (systemctl reboot), then run the driver stage"
  fi
}

nvd::plan() {
  local step state stage
  printf 'os: %s %s\n' "${NVD_OS_ID}" "${NVD_OS_VERSION}"
  printf 'kernel: %s (flavour %s)\n' "${NVD_KERNEL_RELEASE}" "${NVD_KERNEL_FLAVOUR}"
  printf 'driver: %s (branch %s, %s kernel modules)\n' \
    "$(nvd::driver_package)" "$(prov::version NVIDIA_DRIVER_BRANCH)" "${NVD_MODULES}"
  printf 'cuda: %s (CUDA %s)\n' "$(nvd::cuda_package)" "$(prov::version CUDA_VERSION)"
  printf 'keyring: %s\n' "$(nvd::keyring_url)"
  printf 'keyring sha256: %s\n' "${NVD_KEYRING_SHA256}"
  printf 'repository key fingerprint: %s\n' "$(prov::version CUDA_REPO_KEY_FINGERPRINT)"
  printf 'markers: %s\n' "${NVD_MARKER_DIR}"
  for step in "${NVD_STEPS[@]}"; do
    state="run"
    nvd::is_done "${step}" && state="skip (done)"
    stage="driver"
    [[ " ${NVD_KERNEL_STAGE[*]} " == *" ${step} "* ]] && stage="kernel"
    printf 'step %s: %s [%s stage] %s\n' "${step}" "${state}" "${stage}" "$(nvd::describe "${step}")"
  done
}

NVD_TMP_DIRS=()
nvd::cleanup() {
  local dir
  for dir in "${NVD_TMP_DIRS[@]}"; do
    rm -rf -- "${dir}"
  done
}

# nvd::run_steps STEP... : run each step that is not done yet, in order; stop after a reboot.
nvd::run_steps() {
  local step
  for step in "$@"; do
    if nvd::is_done "${step}"; then
      prov::info "step ${step}: already done, skipping"
      continue
    fi
    if [[ " ${NVD_DRIVER_STAGE[*]} " == *" ${step} "* ]]; then
      nvd::check_rebooted
    fi
    prov::info "step ${step}: running: $(nvd::describe "${step}")"
    "nvd::step_${step//-/_}"
    # The reboot step writes its own marker (this boot's id) before rebooting.
    [[ "${step}" == reboot ]] && return 0
    nvd::mark_done "${step}"
    prov::info "step ${step}: done"
  done
}

nvd::main() {
  local plan=0 stage="all"
  NVD_MODULES="$(prov::version NVIDIA_KERNEL_MODULES)"
  while (($# > 0)); do
    case "$1" in
      --plan) plan=1 ;;
      --stage | --modules)
        (($# >= 2)) || prov::die "${PROV_EXIT_USAGE}" "$1 needs a value; run with --help"
        [[ "$1" == --stage ]] && stage="$2"
        [[ "$1" == --modules ]] && NVD_MODULES="$2"
        shift
        ;;
      -h | --help)
        nvd::usage
        return 0
        ;;
      *) prov::die "${PROV_EXIT_USAGE}" "unknown argument '$1'; run with --help" ;;
    esac
    shift
  done
  case "${stage}" in
    kernel | driver | all) ;;
    *) prov::die "${PROV_EXIT_USAGE}" "--stage '${stage}': choose kernel, driver or all" ;;
  esac
  case "${NVD_MODULES}" in
    open | proprietary) ;;
    *) prov::die "${PROV_EXIT_USAGE}" "--modules '${NVD_MODULES}': choose open or proprietary" ;;
  esac
  nvd::detect_os
  nvd::detect_kernel
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
  case "${stage}" in
    kernel) nvd::run_steps "${NVD_KERNEL_STAGE[@]}" ;;
    driver) nvd::run_steps "${NVD_DRIVER_STAGE[@]}" ;;
    all) nvd::run_steps "${NVD_STEPS[@]}" ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  nvd::main "$@"
fi
