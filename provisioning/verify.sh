#!/usr/bin/env bash
# The image's smoke test, run as the last provisioning step (after cleanup.sh) and by tests:
#   secrets  no private key, authorized_keys, history or credential file anywhere under the root
#   env      the environment imports tensorflow, sklearn, skops and google-cloud-storage
#   gpu      TensorFlow sees a GPU when one is attached (--expect-gpu auto|yes|no)
#   trainer  `python -m <trainer module> --help` runs from the environment (not from a checkout)
#
# Usage: verify.sh [--root DIR] [--python PATH] [--checks LIST] [--expect-gpu auto|yes|no]
#                  [--trainer-module MODULE]
#   --root DIR        the tree to check (default /; the image directory for a local image)
#   --python PATH     the environment's interpreter (default <root>/opt/survival/venv/bin/python)
#   --checks LIST     comma-separated subset of secrets,env,gpu,trainer (default: all)
#   --expect-gpu      auto: require a GPU in TensorFlow when nvidia-smi sees one (default)
#   --trainer-module  default trainer.examples.sklearn_digits
# Exit 0 when every check passes, 5 (and one line per failure) otherwise.
set -euo pipefail

PROV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROV_DIR
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${PROV_DIR}/lib.sh"

readonly VERIFY_ALL_CHECKS="secrets,env,gpu,trainer"
readonly VERIFY_DEFAULT_MODULE="trainer.examples.sklearn_digits"

VERIFY_FAILURES=0
VERIFY_TMP=""

verify::usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

verify::fail() {
  prov::log FAIL "$@"
  VERIFY_FAILURES=$((VERIFY_FAILURES + 1))
}

verify::secrets() {
  local root="$1" path found=0
  while IFS= read -r -d '' path; do
    verify::fail "secret left on the image: ${path} (run cleanup.sh --root ${root})"
    found=1
  done < <(prov::find_secrets "${root}")
  ((found)) || prov::info "secrets: none found under ${root}"
}

# The environment's interpreter in isolated mode (-I), from an empty directory: what it imports
# comes from the environment, never from the current directory or PYTHONPATH.
verify::py() {
  local python="$1"
  shift
  (cd "${VERIFY_TMP}" && "${python}" -I "$@")
}

verify::env() {
  local python="$1"
  if verify::py "${python}" -c 'import tensorflow, sklearn, skops, google.cloud.storage; print("tensorflow", tensorflow.__version__, "sklearn", sklearn.__version__, "skops", skops.__version__)'; then
    prov::info "env: ${python} imports tensorflow, sklearn, skops, google-cloud-storage"
  else
    verify::fail "env: ${python} cannot import tensorflow/sklearn/skops/google-cloud-storage; re-run python-env.sh"
  fi
}

verify::gpu() {
  local python="$1" expect="$2"
  if [[ "${expect}" == auto ]]; then
    expect=no
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && expect=yes
  fi
  if [[ "${expect}" == no ]]; then
    prov::info "gpu: no GPU expected; skipped"
    return 0
  fi
  if verify::py "${python}" -c 'import sys, tensorflow as tf; gpus = tf.config.list_physical_devices("GPU"); print("GPUs:", gpus); sys.exit(0 if gpus else 1)'; then
    prov::info "gpu: TensorFlow sees the GPU"
  else
    verify::fail "gpu: a GPU is attached but TensorFlow does not see it; check nvidia-smi and the [and-cuda] requirements"
  fi
}

verify::trainer() {
  local python="$1" module="$2"
  if verify::py "${python}" -m "${module}" --help >/dev/null; then
    prov::info "trainer: python -m ${module} --help runs from the environment"
  else
    verify::fail "trainer: python -m ${module} --help fails in ${python}; pass --trainer-src to python-env.sh"
  fi
}

verify::cleanup() {
  [[ -n "${VERIFY_TMP}" ]] && rm -rf -- "${VERIFY_TMP}"
  return 0
}

verify::main() {
  local root="/" python="" checks="${VERIFY_ALL_CHECKS}" expect_gpu="auto" module="${VERIFY_DEFAULT_MODULE}"
  while (($# > 0)); do
    case "$1" in
      --root | --python | --checks | --expect-gpu | --trainer-module)
        (($# >= 2)) || prov::die "${PROV_EXIT_USAGE}" "$1 needs a value; run with --help"
        case "$1" in
          --root) root="$2" ;;
          --python) python="$2" ;;
          --checks) checks="$2" ;;
          --expect-gpu) expect_gpu="$2" ;;
          --trainer-module) module="$2" ;;
        esac
        shift 2
        ;;
      -h | --help)
        verify::usage
        return 0
        ;;
      *) prov::die "${PROV_EXIT_USAGE}" "unknown argument '$1'; run with --help" ;;
    esac
  done
  [[ -d "${root}" ]] || prov::die "${PROV_EXIT_USAGE}" "--root ${root} is not a directory"
  case "${expect_gpu}" in
    auto | yes | no) ;;
    *) prov::die "${PROV_EXIT_USAGE}" "--expect-gpu must be auto, yes or no, not '${expect_gpu}'" ;;
  esac
  [[ "${module}" =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || prov::die "${PROV_EXIT_USAGE}" "--trainer-module '${module}' is not a module name"
  root="$(cd "${root}" && pwd -P)"
  python="${python:-${root%/}/opt/survival/venv/bin/python}"

  local -a wanted
  local check
  IFS=, read -r -a wanted <<<"${checks}"
  for check in "${wanted[@]}"; do
    case "${check}" in
      secrets | env | gpu | trainer) ;;
      *) prov::die "${PROV_EXIT_USAGE}" "unknown check '${check}'; choose from ${VERIFY_ALL_CHECKS}" ;;
    esac
  done

  VERIFY_TMP="$(mktemp -d)"
  trap verify::cleanup EXIT
  for check in "${wanted[@]}"; do
    if [[ "${check}" != secrets && ! -x "${python}" ]]; then
      verify::fail "${check}: no Python environment at ${python}; run python-env.sh or pass --python"
      continue
    fi
    case "${check}" in
      secrets) verify::secrets "${root}" ;;
      env) verify::env "${python}" ;;
      gpu) verify::gpu "${python}" "${expect_gpu}" ;;
      trainer) verify::trainer "${python}" "${module}" ;;
    esac
  done
  if ((VERIFY_FAILURES > 0)); then
    prov::die "${PROV_EXIT_VERIFY}" "${VERIFY_FAILURES} check(s) failed"
  fi
  prov::info "all checks passed (${checks})"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  verify::main "$@"
fi
