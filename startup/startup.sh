#!/usr/bin/env bash
# startup.sh: the training VM's startup script (metadata key startup-script), run as root by the
# guest agent on every boot, on GCE and unmodified on localgce.
#
# Boot lifecycle: read and strictly validate every metadata value (nothing from metadata is ever
# evaluated by a shell; the hyperparameter JSON is parsed by Python) → if the job is DONE, power
# off (unless keep-alive) → fetch the trainer code at the exact commit recorded in metadata: by
# default a git bundle in the job bucket (trainer-bundle, downloaded with the VM's own service
# account by `python -m trainer.codefetch`, checked with `git bundle verify` and against
# trainer-commit), or a named git remote (trainer-repo) → run the trainer as an unprivileged
# user from the image's Python environment, one attempt at a time, logging to a file, to this
# script's output (journal/serial console) and to the job dir →
# exit 0: power off; exit 75 (notice checkpoint saved): wait for the shutdown that is coming;
# exit 1: retry up to crash-retries times, then FAILED; exit 73 (LEASE held): wait the lease's
# stale limit and try again (a killed holder's LEASE frees itself by then; a live writer's job
# ends DONE, which the next try sees); exit 2/64/66/74/77 (usage, configuration, unusable job
# dir): FAILED at once.
# A SIGTERM (preemption/stop) is forwarded to the trainer, which saves a notice checkpoint.
#
# On localgce every path is under ${LOCALGCE_ROOT} (the instance's disk dir) so an instance never
# touches the host's /var or /opt, and `shutdown` must resolve to localgce's guest shim.
set -euo pipefail

readonly STARTUP_ROOT="${LOCALGCE_ROOT:-}"
readonly STARTUP_METADATA_URL="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1/instance/attributes"
readonly STARTUP_STATE_DIR="${STARTUP_ROOT}/var/lib/survival"
readonly STARTUP_LOG_DIR="${STARTUP_ROOT}/var/log/survival"
readonly STARTUP_RUN_DIR="${STARTUP_ROOT}/run/survival"
readonly STARTUP_SRC_DIR="${STARTUP_STATE_DIR}/src"
readonly STARTUP_VALUES_DIR="${STARTUP_RUN_DIR}/metadata"
readonly STARTUP_LOG_FILE="${STARTUP_LOG_DIR}/startup.log"
readonly STARTUP_TRAINER_LOG="${STARTUP_LOG_DIR}/trainer.log"
readonly STARTUP_PID_FILE="${STARTUP_RUN_DIR}/trainer.pid"
readonly STARTUP_IMAGE_PYTHON="/opt/survival/venv/bin/python"
readonly STARTUP_TRAINER_USER="survival"
readonly STARTUP_NOBODY_ID=65534
readonly STARTUP_CURL_TIMEOUT_SECONDS=10
readonly STARTUP_CURL_RETRIES=5
readonly STARTUP_MAX_VALUE_BYTES=65536
readonly STARTUP_MAX_SCRIPT_BYTES=262144
# The largest code bundle startup.sh downloads (2 GiB); a training repository is megabytes.
readonly STARTUP_MAX_BUNDLE_BYTES=2147483648
# The trainer's default LEASE stale limit (trainer/lease.py); SURVIVAL_LEASE_STALE_SECONDS
# overrides both.
readonly STARTUP_DEFAULT_LEASE_STALE_SECONDS=300

# The trainer's exit codes, mirrored from trainer/exitcodes.py (tests/trainer/test_exitcodes.py
# checks that the two agree).
readonly EX_OK=0
readonly EX_CRASHED=1
readonly EX_USAGE=2
readonly EX_CONFIG=64
readonly EX_JOB_DIR_MISSING=66
readonly EX_LEASE_HELD=73
readonly EX_JOB_DIR_FULL=74
readonly EX_NOTICE_SAVED=75
readonly EX_JOB_DIR_DENIED=77
# This script's own exit code (not the trainer's): refused to power off a localgce host.
readonly STARTUP_EX_UNSAFE_SHUTDOWN=70

# Strict patterns: anything else is rejected, so no value can carry shell syntax.
readonly STARTUP_RE_BRANCH='^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$'
readonly STARTUP_RE_COMMIT='^[0-9a-f]{40}([0-9a-f]{24})?$'
readonly STARTUP_RE_MODULE='^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}$'
readonly STARTUP_RE_JOB_DIR='^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[A-Za-z0-9._=-]+){0,16}$'
readonly STARTUP_RE_REPO='^(https://[A-Za-z0-9.-]+(:[0-9]{1,5})?|file://)(/[A-Za-z0-9._~-]+)+$'
# A code bundle: an object of a bucket as STARTUP_RE_JOB_DIR allows it (same bucket and segment
# rules, no more), named COMMIT.bundle (read_settings also checks COMMIT is trainer-commit and
# that no segment is ..).
readonly STARTUP_RE_BUNDLE='^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[A-Za-z0-9._=-]+){0,15}/[0-9a-f]{40}([0-9a-f]{24})?\.bundle$'
readonly STARTUP_RE_COUNT='^[1-9][0-9]{0,8}$'
# checkpoint-steps may be 0: only notice and final saves, as the trainer allows.
readonly STARTUP_RE_COUNT_OR_ZERO='^(0|[1-9][0-9]{0,8})$'
readonly STARTUP_RE_SEED='^[0-9]{1,9}$'
readonly STARTUP_RE_RETRIES='^[0-9]$'
readonly STARTUP_RE_BOOL='^(true|false)$'

# Reads the hyperparameters from stdin: a flat JSON object of plain names to numbers, booleans
# or simple words. Prints the canonical JSON, or the reason it is rejected (exit 1).
readonly STARTUP_HPARAMS_CHECK='
import json, re, sys
try:
    value = json.loads(sys.stdin.read())
except ValueError as error:
    sys.exit(f"hparams is not valid JSON ({error})")
if not isinstance(value, dict):
    sys.exit("hparams must be a JSON object like {\"learning_rate\": 0.01}")
for key, item in value.items():
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
        sys.exit(f"hparams key {key[:40]!r} is not a plain name")
    if isinstance(item, str) and not re.fullmatch(r"[A-Za-z0-9_.+-]{0,100}", item):
        sys.exit(f"hparams value of {key} must be a number, true/false or a simple word")
    if not isinstance(item, (str, int, float, bool)):
        sys.exit(f"hparams value of {key} must be a number, true/false or a simple word")
print(json.dumps(value, sort_keys=True))
'

STARTUP_TRAINER_PID=""
STARTUP_STOPPING=0
STARTUP_JOB_DIR=""
STARTUP_KEEP_ALIVE=false

startup::log() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) survival-startup: $*"
  printf '%s\n' "${line}" >&2
  printf '%s\n' "${line}" >>"${STARTUP_LOG_FILE}" 2>/dev/null || true
}

# startup::python : the image's Python (real images: /opt/survival/venv; localgce: on PATH).
startup::python() {
  if [[ -x "${STARTUP_ROOT}${STARTUP_IMAGE_PYTHON}" ]]; then
    printf '%s\n' "${STARTUP_ROOT}${STARTUP_IMAGE_PYTHON}"
  elif [[ -x "${STARTUP_IMAGE_PYTHON}" && -z "${STARTUP_ROOT}" ]]; then
    printf '%s\n' "${STARTUP_IMAGE_PYTHON}"
  elif command -v python3 >/dev/null 2>&1; then
    command -v python3
  else
    startup::log "no Python found: the image needs ${STARTUP_IMAGE_PYTHON} (bake it with invoke bake-image)"
    return 1
  fi
}

# startup::metadata_keys : the instance's attribute names, one per line.
startup::metadata_keys() {
  curl -fsS --retry "${STARTUP_CURL_RETRIES}" --retry-connrefused \
    --max-time "${STARTUP_CURL_TIMEOUT_SECONDS}" -H 'Metadata-Flavor: Google' \
    "${STARTUP_METADATA_URL}/"
}

# startup::fetch KEY : download attribute KEY into ${STARTUP_VALUES_DIR}/KEY (KEY is ours).
startup::fetch() {
  local key="$1"
  curl -fsS --retry "${STARTUP_CURL_RETRIES}" --retry-connrefused \
    --max-time "${STARTUP_CURL_TIMEOUT_SECONDS}" -H 'Metadata-Flavor: Google' \
    --max-filesize "${STARTUP_MAX_SCRIPT_BYTES}" \
    -o "${STARTUP_VALUES_DIR}/${key}" "${STARTUP_METADATA_URL}/${key}"
}

# startup::value VAR KEY PATTERN [DEFAULT] : set VAR (one of ours) to the validated value of
# metadata KEY, or return 1 with the reason in STARTUP_REASON. Absent keys take DEFAULT when one
# is given. PATTERN "json" only fetches the value (Python validates it, never the shell).
STARTUP_REASON=""
startup::value() {
  local var="$1" key="$2" pattern="$3" value size length file="${STARTUP_VALUES_DIR}/$2"
  local LC_ALL=C
  rm -f -- "${file}"
  if ! grep -qxF -- "${key}" "${STARTUP_VALUES_DIR}/.keys"; then
    if (($# >= 4)); then
      printf -v "${var}" '%s' "$4"
      return 0
    fi
    STARTUP_REASON="metadata key ${key} is missing"
    return 1
  fi
  if ! startup::fetch "${key}" 2>/dev/null; then
    STARTUP_REASON="metadata key ${key} could not be read or is larger than ${STARTUP_MAX_SCRIPT_BYTES} bytes"
    return 1
  fi
  size="$(stat -c %s -- "${file}")"
  if ((size > STARTUP_MAX_VALUE_BYTES)); then
    STARTUP_REASON="metadata key ${key} is ${size} bytes, over the ${STARTUP_MAX_VALUE_BYTES}-byte limit"
    return 1
  fi
  if [[ "${pattern}" == json ]]; then
    return 0
  fi
  value="$(cat -- "${file}")"
  # Command substitution drops trailing newlines and bash drops NUL bytes: a length mismatch
  # means the value held some, which no valid value does.
  length="$(printf '%s' "${value}" | wc -c)"
  if ((length != size)) || ! [[ "${value}" =~ ${pattern} ]]; then
    STARTUP_REASON="metadata key ${key} has an invalid value (it must match ${pattern})"
    return 1
  fi
  printf -v "${var}" '%s' "${value}"
}

startup::mark_failed() {
  local reason="$1"
  startup::log "FAILED: ${reason}"
  if ! "${STARTUP_PYTHON}" -m trainer.jobdir mark-failed "${STARTUP_JOB_DIR}" --reason "${reason}" 2>&1 | startup::prefix; then
    startup::log "could not write FAILED into ${STARTUP_JOB_DIR}"
  fi
}

startup::prefix() {
  local line
  while IFS= read -r line; do
    startup::log "${line}"
  done
}

# startup::poweroff : shut the VM down unless keep-alive. On localgce `shutdown` must be the
# guest shim; anything else could power off the host, so refuse.
startup::poweroff() {
  if [[ "${STARTUP_KEEP_ALIVE:-false}" == true ]]; then
    startup::log "keep-alive is true: leaving the VM running"
    return 0
  fi
  if [[ -n "${STARTUP_ROOT}" ]]; then
    local resolved
    resolved="$(command -v shutdown || true)"
    if [[ -z "${LOCALGCE_GUEST_BIN:-}" || "${resolved}" != "${LOCALGCE_GUEST_BIN}/shutdown" ]]; then
      startup::log "refusing to power off: shutdown resolves to '${resolved}', not localgce's shim in LOCALGCE_GUEST_BIN"
      exit "${STARTUP_EX_UNSAFE_SHUTDOWN}"
    fi
  fi
  startup::log "powering off"
  shutdown -h now
}

# startup::on_term : preemption/stop. Forward to the trainer (it saves a notice checkpoint) and
# keep waiting for it; shutdown.sh does the same from the other side.
startup::on_term() {
  STARTUP_STOPPING=1
  startup::log "received SIGTERM: asking the trainer to save and stop"
  if [[ -n "${STARTUP_TRAINER_PID}" ]]; then
    kill -TERM "${STARTUP_TRAINER_PID}" 2>/dev/null || true
  fi
}

# startup::run_as : argv prefix that drops root for the trainer.
startup::run_as() {
  STARTUP_RUN_AS=()
  if ((EUID != 0)); then
    startup::log "not root: running the trainer as $(id -un)"
    return 0
  fi
  if id -u "${STARTUP_TRAINER_USER}" >/dev/null 2>&1; then
    local home
    home="$(getent passwd "${STARTUP_TRAINER_USER}" | cut -d: -f6)"
    STARTUP_RUN_AS=(setpriv "--reuid=${STARTUP_TRAINER_USER}" "--regid=${STARTUP_TRAINER_USER}" --init-groups
      env "HOME=${home}" "USER=${STARTUP_TRAINER_USER}" "LOGNAME=${STARTUP_TRAINER_USER}")
  else
    local home="${STARTUP_STATE_DIR}/home"
    mkdir -p "${home}/tmp"
    chown -R "${STARTUP_NOBODY_ID}:${STARTUP_NOBODY_ID}" "${home}"
    chmod 0700 "${home}"
    STARTUP_RUN_AS=(setpriv "--reuid=${STARTUP_NOBODY_ID}" "--regid=${STARTUP_NOBODY_ID}" --clear-groups
      env "HOME=${home}" "TMPDIR=${home}/tmp" "USER=nobody" "LOGNAME=nobody")
  fi
  # The image's Python must be usable by that user (real images: /opt/survival/venv, world
  # readable). A localgce image may point into a private directory of the host (e.g. a venv
  # under /root): there only, run as the current user and say so; on GCE it is an error.
  if ! "${STARTUP_RUN_AS[@]}" "${STARTUP_PYTHON}" -I -c '' >/dev/null 2>&1; then
    if [[ -n "${STARTUP_ROOT}" ]]; then
      startup::log "WARNING: ${STARTUP_PYTHON} is not executable by ${STARTUP_RUN_AS[1]#--reuid=} (a private parent directory on the host); localgce only: running the trainer as $(id -un)"
      STARTUP_RUN_AS=()
      return 0
    fi
    STARTUP_REASON="the image's Python ${STARTUP_PYTHON} cannot be run by ${STARTUP_RUN_AS[1]#--reuid=}"
    return 1
  fi
  startup::log "running the trainer as ${STARTUP_RUN_AS[1]#--reuid=}"
}

# startup::fetch_remote : fetch refs/heads/${STARTUP_BRANCH} of the git remote ${STARTUP_REPO}.
# Credentials are the VM's own (a gcloud credential helper for Google-hosted remotes, when the
# image has one) or the image's git configuration; none ever comes from metadata.
startup::fetch_remote() {
  local git_auth=() host="${STARTUP_REPO#https://}"
  host="${host%%/*}"
  if [[ "${STARTUP_REPO}" == https://* ]] && command -v git-credential-gcloud.sh >/dev/null 2>&1; then
    if [[ "${host}" == source.developers.google.com ]]; then
      # Cloud Source Repositories (existing customers only): the VM's service account.
      git_auth=(-c "credential.https://source.developers.google.com.helper=gcloud.sh")
    elif [[ "${host}" == *.sourcemanager.dev ]]; then
      # Secure Source Manager: the VM's service account, as its docs configure gcloud.sh.
      git_auth=(-c "credential.https://${host}.helper=gcloud.sh")
    fi
  fi
  # Values were validated above (a URL, a branch name): neither can start with '-'.
  if ! git -C "${STARTUP_SRC_DIR}" "${git_auth[@]}" fetch --quiet "${STARTUP_REPO}" "refs/heads/${STARTUP_BRANCH}"; then
    STARTUP_REASON="cannot fetch commit ${STARTUP_COMMIT} of branch ${STARTUP_BRANCH} from ${STARTUP_REPO}"
    return 1
  fi
}

# startup::fetch_bundle : bring ${STARTUP_COMMIT} in from the bundle ${STARTUP_BUNDLE}: download it
# with the VM's service account, `git bundle verify` it, fetch its branch and check that the
# branch is exactly trainer-commit. A commit already on this disk (an earlier boot fetched it) is
# not downloaded again.
startup::fetch_bundle() {
  local file="${STARTUP_STATE_DIR}/code/${STARTUP_COMMIT}.bundle" err="${STARTUP_VALUES_DIR}/.code-error" fetched line
  if git -C "${STARTUP_SRC_DIR}" cat-file -e "${STARTUP_COMMIT}^{commit}" 2>/dev/null; then
    startup::log "commit ${STARTUP_COMMIT:0:12} is already on this disk; not downloading ${STARTUP_BUNDLE}"
    return 0
  fi
  mkdir -p "${file%/*}"
  if ! "${STARTUP_PYTHON}" -m trainer.codefetch download "${STARTUP_BUNDLE}" "${file}" \
    --max-bytes "${STARTUP_MAX_BUNDLE_BYTES}" 2>"${err}" | startup::prefix; then
    line="$(grep -v '^[[:space:]]*$' "${err}" | tail -n 1 | head -c 300 || true)"
    if grep -q 'No module named trainer.codefetch' "${err}"; then
      line="the image's trainer package has no trainer.codefetch (baked before code bundles); bake a new image with invoke bake-image, or set survival.trainer_repo to a git remote"
    fi
    STARTUP_REASON="cannot fetch the code: ${line#error: }"
    return 1
  fi
  if ! git -C "${STARTUP_SRC_DIR}" bundle verify --quiet "${file}" 2>"${err}"; then
    STARTUP_REASON="validation error: ${STARTUP_BUNDLE} is not a complete git bundle ($(head -n 1 "${err}" | head -c 200))"
    rm -f -- "${file}"
    return 1
  fi
  if ! git -C "${STARTUP_SRC_DIR}" fetch --quiet --no-tags "${file}" "refs/heads/${STARTUP_BRANCH}" 2>"${err}"; then
    STARTUP_REASON="validation error: ${STARTUP_BUNDLE} has no branch ${STARTUP_BRANCH} ($(head -n 1 "${err}" | head -c 200))"
    rm -f -- "${file}"
    return 1
  fi
  rm -f -- "${file}"
  fetched="$(git -C "${STARTUP_SRC_DIR}" rev-parse --verify --quiet FETCH_HEAD || true)"
  if [[ "${fetched}" != "${STARTUP_COMMIT}" ]]; then
    STARTUP_REASON="validation error: ${STARTUP_BUNDLE} holds commit ${fetched:-none}, not trainer-commit ${STARTUP_COMMIT}; push the code again"
    return 1
  fi
  startup::log "fetched commit ${STARTUP_COMMIT:0:12} from ${STARTUP_BUNDLE}"
}

# startup::checkout : the trainer code at exactly ${STARTUP_COMMIT}; on failure the reason is in
# STARTUP_REASON.
startup::checkout() {
  if [[ ! -d "${STARTUP_SRC_DIR}/.git" ]]; then
    rm -rf "${STARTUP_SRC_DIR}"
    git init --quiet "${STARTUP_SRC_DIR}"
  fi
  if [[ -n "${STARTUP_BUNDLE}" ]]; then
    startup::fetch_bundle || return 1
  else
    startup::fetch_remote || return 1
  fi
  # A hex commit, validated above: it cannot start with '-'.
  if ! git -C "${STARTUP_SRC_DIR}" -c advice.detachedHead=false checkout --quiet --force --detach "${STARTUP_COMMIT}"; then
    STARTUP_REASON="cannot check out commit ${STARTUP_COMMIT} (branch ${STARTUP_BRANCH})"
    return 1
  fi
  git -C "${STARTUP_SRC_DIR}" clean --quiet -fdx
  chmod -R a+rX "${STARTUP_SRC_DIR}"
}

# startup::attempt_number PREVIOUS : the number of the next attempt, which names its log. The job
# dir decides (trainer.jobdir numbers it exactly as the trainer numbers its own record, and a
# crashed attempt that left only a LEASE or an uploaded log keeps its number, so no log is ever
# overwritten). If the job dir cannot be read, PREVIOUS + 1 at least keeps this boot's logs apart.
startup::attempt_number() {
  local previous="$1" next
  next="$("${STARTUP_PYTHON}" -m trainer.jobdir next-attempt "${STARTUP_JOB_DIR}")" || next=""
  if [[ ! "${next}" =~ ^[1-9][0-9]{0,8}$ ]]; then
    next=$((previous + 1))
    startup::log "could not read the next attempt number from ${STARTUP_JOB_DIR}; using ${next}"
  fi
  printf '%d\n' "${next}"
}

# startup::run_trainer ATTEMPT : one trainer run; sets STARTUP_RC.
startup::run_trainer() {
  local attempt="$1" log_file="${STARTUP_LOG_DIR}/attempt-$1.log" tail_pid
  : >"${log_file}"
  startup::log "attempt ${attempt}: python -m ${STARTUP_MODULE} (commit ${STARTUP_COMMIT:0:12}, branch ${STARTUP_BRANCH})"
  (cd "${STARTUP_SRC_DIR}" && exec "${STARTUP_RUN_AS[@]}" "${STARTUP_PYTHON}" -m "${STARTUP_MODULE}" \
    --job-dir "${STARTUP_JOB_DIR}" --train-steps "${STARTUP_TRAIN_STEPS}" \
    --checkpoint-steps "${STARTUP_CHECKPOINT_STEPS}" --seed "${STARTUP_SEED}" \
    --hparams-json "${STARTUP_HPARAMS}") >>"${log_file}" 2>&1 </dev/null &
  STARTUP_TRAINER_PID=$!
  printf '%s\n' "${STARTUP_TRAINER_PID}" >"${STARTUP_PID_FILE}"
  # Mirror the attempt's log into trainer.log and this script's output (the serial console). The
  # trainer writes to a file, so a dying tail can never break its pipe mid-checkpoint.
  tail -n +1 -F --pid="${STARTUP_TRAINER_PID}" "${log_file}" 2>/dev/null | tee -a "${STARTUP_TRAINER_LOG}" >&2 &
  tail_pid=$!
  if ((STARTUP_STOPPING)); then
    kill -TERM "${STARTUP_TRAINER_PID}" 2>/dev/null || true
  fi
  STARTUP_RC=0
  while true; do
    wait "${STARTUP_TRAINER_PID}" && STARTUP_RC=0 || STARTUP_RC=$?
    # wait returns >128 when our TERM trap interrupted it; the trainer is still running then.
    if kill -0 "${STARTUP_TRAINER_PID}" 2>/dev/null; then
      continue
    fi
    break
  done
  wait "${tail_pid}" 2>/dev/null || true
  rm -f "${STARTUP_PID_FILE}"
  STARTUP_TRAINER_PID=""
  startup::log "attempt ${attempt}: trainer exited with ${STARTUP_RC}"
  "${STARTUP_PYTHON}" -m trainer.jobdir upload-log "${STARTUP_JOB_DIR}" "${log_file}" \
    --name "attempt-${attempt}.log" 2>&1 | startup::prefix || startup::log "log upload failed"
}

# startup::lease_wait_seconds : whole seconds to wait before retrying after exit 73: the
# trainer's stale limit (SURVIVAL_LEASE_STALE_SECONDS, as the trainer reads it) plus a margin.
startup::lease_wait_seconds() {
  local stale="${SURVIVAL_LEASE_STALE_SECONDS:-${STARTUP_DEFAULT_LEASE_STALE_SECONDS}}"
  if [[ ! "${stale}" =~ ^[0-9]{1,6}(\.[0-9]+)?$ ]]; then
    stale="${STARTUP_DEFAULT_LEASE_STALE_SECONDS}"
  fi
  printf '%d\n' $((${stale%%.*} + 2))
}

# startup::wait_for_lease : exit 73 means another writer's LEASE is not stale yet. It is either
# a killed trainer's (on another boot its pid cannot be checked), which goes stale, or a live
# writer's, whose job ends DONE; either way the next try after the stale limit moves on.
startup::wait_for_lease() {
  local seconds
  seconds="$(startup::lease_wait_seconds)"
  startup::log "the job dir's LEASE is held by another writer; trying again in ${seconds}s (its stale limit)"
  sleep "${seconds}" &
  wait $! || true
  if ((STARTUP_STOPPING)); then
    startup::log "the VM is shutting down; not trying again"
    exit 0
  fi
}

startup::wait_for_shutdown() {
  if ((STARTUP_STOPPING)); then
    # The shutdown is already under way (we got its SIGTERM): nothing left to do, so end now
    # rather than hold the guest until the end of the window.
    startup::log "notice checkpoint saved; the VM is shutting down"
    exit 0
  fi
  startup::log "notice checkpoint saved; waiting for the shutdown"
  while true; do
    sleep 5 &
    wait $! || true
    if ((STARTUP_STOPPING)); then
      # Its SIGTERM came (after a preemption notice, say): end now, not at the window's end.
      kill "$!" 2>/dev/null || true
      startup::log "the VM is shutting down; nothing left to do"
      exit 0
    fi
  done
}

startup::read_settings() {
  mkdir -p "${STARTUP_VALUES_DIR}"
  chmod 0700 "${STARTUP_VALUES_DIR}"
  if ! startup::metadata_keys >"${STARTUP_VALUES_DIR}/.keys"; then
    startup::log "cannot reach the metadata server at ${STARTUP_METADATA_URL}"
    return 1
  fi
  if ! startup::value STARTUP_JOB_DIR job-dir "${STARTUP_RE_JOB_DIR}"; then
    startup::log "validation error: ${STARTUP_REASON}; no job dir to record FAILED in"
    return 1
  fi
  startup::value STARTUP_KEEP_ALIVE keep-alive "${STARTUP_RE_BOOL}" false || STARTUP_KEEP_ALIVE=false
  local hparams_file="${STARTUP_VALUES_DIR}/hparams"
  startup::value STARTUP_REPO trainer-repo "${STARTUP_RE_REPO}" "" \
    && startup::value STARTUP_BUNDLE trainer-bundle "${STARTUP_RE_BUNDLE}" "" \
    && startup::value STARTUP_BRANCH trainer-branch "${STARTUP_RE_BRANCH}" \
    && startup::value STARTUP_COMMIT trainer-commit "${STARTUP_RE_COMMIT}" \
    && startup::value STARTUP_MODULE trainer-module "${STARTUP_RE_MODULE}" \
    && startup::value STARTUP_TRAIN_STEPS train-steps "${STARTUP_RE_COUNT}" \
    && startup::value STARTUP_CHECKPOINT_STEPS checkpoint-steps "${STARTUP_RE_COUNT_OR_ZERO}" \
    && startup::value STARTUP_SEED seed "${STARTUP_RE_SEED}" 0 \
    && startup::value STARTUP_CRASH_RETRIES crash-retries "${STARTUP_RE_RETRIES}" 2 \
    && startup::value STARTUP_HPARAMS_RAW hparams json '{}' \
    || return 2
  if [[ "${STARTUP_BRANCH}" == *..* ]]; then
    STARTUP_REASON="metadata key trainer-branch has an invalid value (contains ..)"
    return 2
  fi
  # The code comes from exactly one place: a bundle in Cloud Storage or a git remote.
  if [[ -z "${STARTUP_BUNDLE}" && -z "${STARTUP_REPO}" ]]; then
    STARTUP_REASON="metadata has neither trainer-bundle nor trainer-repo: nothing to fetch the code from"
    return 2
  fi
  if [[ -n "${STARTUP_BUNDLE}" && -n "${STARTUP_REPO}" ]]; then
    STARTUP_REASON="metadata has both trainer-bundle and trainer-repo; set only one"
    return 2
  fi
  if [[ -n "${STARTUP_BUNDLE}" ]]; then
    if [[ "${STARTUP_BUNDLE}/" == */../* ]]; then
      STARTUP_REASON="metadata key trainer-bundle has an invalid value (a .. segment)"
      return 2
    fi
    if [[ "${STARTUP_BUNDLE##*/}" != "${STARTUP_COMMIT}.bundle" ]]; then
      STARTUP_REASON="metadata key trainer-bundle names ${STARTUP_BUNDLE##*/}, not the bundle of trainer-commit ${STARTUP_COMMIT}"
      return 2
    fi
  fi
  if [[ ! -f "${hparams_file}" ]]; then
    printf '%s' "${STARTUP_HPARAMS_RAW}" >"${hparams_file}"
  fi
  local reason
  if ! STARTUP_HPARAMS="$("${STARTUP_PYTHON}" -I -c "${STARTUP_HPARAMS_CHECK}" <"${hparams_file}" 2>"${STARTUP_VALUES_DIR}/.hparams-error")"; then
    reason="$(head -c 300 "${STARTUP_VALUES_DIR}/.hparams-error")"
    STARTUP_REASON="metadata key hparams is invalid: ${reason}"
    return 2
  fi
}

startup::main() {
  umask 022
  mkdir -p "${STARTUP_STATE_DIR}" "${STARTUP_LOG_DIR}" "${STARTUP_RUN_DIR}"
  startup::log "boot: starting (root=${STARTUP_ROOT:-/})"
  STARTUP_PYTHON="$(startup::python)"
  readonly STARTUP_PYTHON
  trap startup::on_term TERM

  local rc=0
  startup::read_settings || rc=$?
  if ((rc == 1)); then
    startup::log "cannot run without a valid job-dir; powering off"
    startup::poweroff
    return 1
  elif ((rc != 0)); then
    startup::log "validation error: ${STARTUP_REASON}"
    startup::mark_failed "validation error: ${STARTUP_REASON}"
    startup::poweroff
    return 1
  fi
  startup::log "job dir ${STARTUP_JOB_DIR}, module ${STARTUP_MODULE}, ${STARTUP_TRAIN_STEPS} steps"

  if "${STARTUP_PYTHON}" -m trainer.jobdir is-done "${STARTUP_JOB_DIR}"; then
    startup::log "the job is already DONE"
    startup::poweroff
    return 0
  fi
  if ! startup::checkout; then
    startup::mark_failed "${STARTUP_REASON}"
    startup::poweroff
    return 1
  fi
  if ! startup::run_as; then
    startup::mark_failed "${STARTUP_REASON}"
    startup::poweroff
    return 1
  fi

  local crashes=0 attempt=0
  while true; do
    attempt="$(startup::attempt_number "${attempt}")"
    startup::run_trainer "${attempt}"
    case "${STARTUP_RC}" in
      "${EX_OK}")
        startup::log "training finished"
        break
        ;;
      "${EX_NOTICE_SAVED}")
        startup::wait_for_shutdown
        ;;
      "${EX_LEASE_HELD}")
        if ((STARTUP_STOPPING)); then
          startup::wait_for_shutdown
        fi
        startup::wait_for_lease
        ;;
      "${EX_USAGE}" | "${EX_CONFIG}" | "${EX_JOB_DIR_MISSING}" | "${EX_JOB_DIR_FULL}" | "${EX_JOB_DIR_DENIED}")
        startup::mark_failed "trainer exited with ${STARTUP_RC} (see logs/attempt-${attempt}.log); not retrying"
        break
        ;;
      "${EX_CRASHED}" | *)
        if ((STARTUP_STOPPING)); then
          startup::wait_for_shutdown
        fi
        crashes=$((crashes + 1))
        if ((crashes > STARTUP_CRASH_RETRIES)); then
          startup::mark_failed "trainer crashed ${crashes} times (last exit ${STARTUP_RC}, see logs/attempt-${attempt}.log)"
          break
        fi
        startup::log "trainer crashed (exit ${STARTUP_RC}); retry ${crashes} of ${STARTUP_CRASH_RETRIES}"
        ;;
    esac
  done
  startup::poweroff
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  startup::main "$@"
fi
