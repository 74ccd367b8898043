#!/usr/bin/env bash
# Creates the image's Python environment: a virtualenv with the pinned requirements (TensorFlow with
# CUDA on GPU images, the CPU build otherwise; scikit-learn, skops, google-cloud-storage) and the
# kit's trainer package, so a VM booted from the image can run `python -m trainer...` at once.
#
# Usage: python-env.sh [--prefix DIR] [--flavor cpu|gpu] [--requirements FILE] [--trainer-src DIR]
#                      [--python PYTHON] [--cache-dir DIR]
#   --prefix DIR         the virtualenv (default /opt/survival/venv; env PYTHON_ENV_PREFIX)
#   --flavor cpu|gpu     which requirements file (default cpu; env PYTHON_ENV_FLAVOR)
#   --requirements FILE  explicit requirements file (overrides --flavor; env PYTHON_ENV_REQUIREMENTS)
#   --trainer-src DIR    a directory holding the `trainer` package to copy into the environment
#                        (env PYTHON_ENV_TRAINER_SRC; default: none)
#   --python PYTHON      base interpreter, 3.11+ (default: /usr/bin/python3.11, python3.11, python3)
#   --cache-dir DIR      pip cache, kept between bakes so re-bakes are fast (env PIP_CACHE_DIR)
#
# Idempotent: when the environment already holds exactly these requirements (a hash recorded in
# <prefix>/.survival-requirements.sha256) the pip step is skipped; the trainer copy is refreshed.
set -euo pipefail

PROV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROV_DIR
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${PROV_DIR}/lib.sh"

readonly PYENV_DEFAULT_PREFIX="/opt/survival/venv"
readonly PYENV_STAMP_NAME=".survival-requirements.sha256"

pyenv::usage() {
  sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# pyenv::base_python CHOICE : the interpreter to build the venv with; must be Python 3.11+.
pyenv::base_python() {
  local choice="$1"
  if [[ -z "${choice}" ]]; then
    # The OS interpreter first (what guest-setup.sh installs): an environment built on a
    # per-user interpreter (pyenv under /root, say) cannot be run by the unprivileged trainer user.
    local candidate
    for candidate in /usr/bin/python3.11 python3.11 python3; do
      if command -v "${candidate}" >/dev/null 2>&1; then
        choice="${candidate}"
        break
      fi
    done
    choice="${choice:-python3}"
  fi
  command -v "${choice}" >/dev/null 2>&1 ||
    prov::die "${PROV_EXIT_USAGE}" "no ${choice} on PATH; install Python 3.11+ (guest-setup.sh does on the image) or pass --python"
  "${choice}" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
    prov::die "${PROV_EXIT_USAGE}" "${choice} is older than 3.11; the pinned numpy/scikit-learn need 3.11+; pass --python"
  printf '%s\n' "${choice}"
}

# pyenv::install_trainer PREFIX SRC : copy SRC/trainer into the environment's site-packages.
pyenv::install_trainer() {
  local prefix="$1" src="$2" purelib
  [[ -f "${src}/trainer/__init__.py" ]] ||
    prov::die "${PROV_EXIT_USAGE}" "${src}/trainer/__init__.py not found; --trainer-src must be the kit's checkout (the directory holding trainer/)"
  purelib="$("${prefix}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -rf -- "${purelib}/trainer"
  cp -R -- "${src}/trainer" "${purelib}/trainer"
  find "${purelib}/trainer" -name '__pycache__' -type d -prune -exec rm -rf -- {} +
  prov::info "trainer package installed into ${purelib}/trainer"
}

pyenv::main() {
  local prefix="${PYTHON_ENV_PREFIX:-${PYENV_DEFAULT_PREFIX}}"
  local flavor="${PYTHON_ENV_FLAVOR:-cpu}"
  local requirements="${PYTHON_ENV_REQUIREMENTS:-}"
  local trainer_src="${PYTHON_ENV_TRAINER_SRC:-}"
  local python_choice="" cache_dir="${PIP_CACHE_DIR:-}"
  while (($# > 0)); do
    case "$1" in
      --prefix | --flavor | --requirements | --trainer-src | --python | --cache-dir)
        (($# >= 2)) || prov::die "${PROV_EXIT_USAGE}" "$1 needs a value; run with --help"
        case "$1" in
          --prefix) prefix="$2" ;;
          --flavor) flavor="$2" ;;
          --requirements) requirements="$2" ;;
          --trainer-src) trainer_src="$2" ;;
          --python) python_choice="$2" ;;
          --cache-dir) cache_dir="$2" ;;
        esac
        shift 2
        continue
        ;;
      -h | --help)
        pyenv::usage
        return 0
        ;;
      *) prov::die "${PROV_EXIT_USAGE}" "unknown argument '$1'; run with --help" ;;
    esac
  done
  case "${flavor}" in
    cpu | gpu) ;;
    *) prov::die "${PROV_EXIT_USAGE}" "--flavor must be cpu or gpu, not '${flavor}'" ;;
  esac
  [[ "${prefix}" == /* ]] || prov::die "${PROV_EXIT_USAGE}" "--prefix must be an absolute path, not '${prefix}'"
  requirements="${requirements:-${PROV_DIR}/requirements-${flavor}.txt}"
  [[ -r "${requirements}" ]] || prov::die "${PROV_EXIT_USAGE}" "requirements file ${requirements} not found"

  local python want_hash have_hash=""
  python="$(pyenv::base_python "${python_choice}")"
  want_hash="$(sha256sum "${requirements}" | cut -d' ' -f1)"
  if [[ ! -x "${prefix}/bin/python" ]]; then
    prov::info "creating virtualenv ${prefix} with $("${python}" --version)"
    mkdir -p "$(dirname "${prefix}")"
    "${python}" -m venv "${prefix}"
  fi
  [[ -f "${prefix}/${PYENV_STAMP_NAME}" ]] && have_hash="$(<"${prefix}/${PYENV_STAMP_NAME}")"
  if [[ "${have_hash}" == "${want_hash}" ]]; then
    prov::info "requirements already installed (${requirements}); skipping pip"
  else
    local -a pip_args=(install --disable-pip-version-check --no-input --no-compile -r "${requirements}")
    [[ -n "${cache_dir}" ]] && pip_args+=(--cache-dir "${cache_dir}")
    prov::info "installing ${requirements} into ${prefix}"
    local started="${SECONDS}"
    "${prefix}/bin/python" -m pip "${pip_args[@]}"
    printf '%s\n' "${want_hash}" >"${prefix}/${PYENV_STAMP_NAME}"
    prov::info "pip install took $((SECONDS - started)) s"
  fi
  if [[ -n "${trainer_src}" ]]; then
    pyenv::install_trainer "${prefix}" "${trainer_src}"
  fi
  # The full import check (TensorFlow takes seconds to import) is verify.sh's job.
  "${prefix}/bin/python" -m pip check --disable-pip-version-check ||
    prov::die "${PROV_EXIT_VERIFY}" "the environment at ${prefix} has broken requirements (pip check above); re-run python-env.sh"
  prov::info "environment ready: ${prefix}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  pyenv::main "$@"
fi
