#!/usr/bin/env bash
# batch-runner.sh: the job runner of a Cloud Batch task (`invoke train --engine batch`,
# `invoke sweep --engine batch`). It is startup.sh's logic, unchanged, with three differences:
#
# - Settings come from the task's environment, not from instance metadata (a Batch VM carries no
#   metadata of ours). Each SURVIVAL_<KEY> variable (taskSpec.environment) holds the value of the
#   metadata key <key> (SURVIVAL_TRAINER_COMMIT is trainer-commit, ...); the runner copies each one
#   verbatim into a file and startup.sh's own validation reads those files, so every value is
#   checked against the same strict patterns and nothing is ever evaluated by a shell.
#   A sweep task instead gets SURVIVAL_SWEEP (gs://BUCKET/.../sweeps/NAME/sweep.json) and picks
#   its point by BATCH_TASK_INDEX (through SURVIVAL_SWEEP_POINTS, a list of point indexes, when a
#   job runs only some points); its job dir is .../sweeps/NAME/points/<point>.
# - The VM is Batch's: the runner never powers it off; the task simply ends.
# - The outcome is the task's exit status: 0 when the job is DONE; 75 (the trainer's
#   notice-saved code) after a checkpoint on a preemption or shutdown notice, which the job's
#   lifecycle policy retries on a new VM like Batch's own 50001; 1 when the job FAILED (the reason
#   is in the job dir's FAILED marker), which is not retried.
#
# survival/batch_engine.py sends startup.sh followed by this file as the runnable's script.text.
# Run on its own (tests, shellcheck), it sources startup.sh from its own directory.
set -euo pipefail

if ! declare -F startup::main >/dev/null; then
  # shellcheck source=startup/startup.sh
  source "$(dirname -- "${BASH_SOURCE[0]}")/startup.sh"
fi

readonly BATCH_SOURCE_DIR="${STARTUP_RUN_DIR}/batch-values"
# The settings a task may carry, as startup.sh's metadata keys (keep-alive has no meaning here).
readonly BATCH_KEYS=(trainer-repo trainer-bundle trainer-branch trainer-commit trainer-module
  job-dir train-steps checkpoint-steps seed hparams crash-retries)
readonly BATCH_EX_FAILED=1
# A sweep.json: an object of a bucket as startup.sh allows a job dir, named sweep.json.
readonly BATCH_RE_SWEEP='^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[A-Za-z0-9._=-]+){1,15}/sweep\.json$'
readonly BATCH_RE_INDEX='^(0|[1-9][0-9]{0,5})$'
readonly BATCH_RE_POINTS='^(0|[1-9][0-9]{0,5})(,(0|[1-9][0-9]{0,5}))*$'
readonly BATCH_MAX_SWEEP_BYTES=4194304
readonly BATCH_MAX_POINTS_BYTES=65536

# Reads sweep.json (argv: file, task index, point list, sweep URL, output dir) and writes one file
# per setting of the chosen point into the output dir, named as startup.sh's metadata keys, plus
# .keys; prints the point's index. Only text is written: startup.sh validates every value next.
readonly BATCH_SWEEP_PICK='
import json, pathlib, sys
path, task, order, url, out = sys.argv[1:6]
keys = ("trainer-repo", "trainer-bundle", "trainer-branch", "trainer-commit", "trainer-module",
        "train-steps", "checkpoint-steps", "seed", "crash-retries")
try:
    data = json.loads(pathlib.Path(path).read_text())
except ValueError as error:
    sys.exit(f"sweep.json is not valid JSON ({error})")
if not isinstance(data, dict) or not isinstance(data.get("spec"), dict) \
        or not isinstance(data.get("points"), list):
    sys.exit("sweep.json must be an object with a spec object and a points list")
points = [int(p) for p in order.split(",")] if order else list(range(len(data["points"])))
if int(task) >= len(points):
    sys.exit(f"task index {task} is past the {len(points)} points of this job")
point = points[int(task)]
if point >= len(data["points"]) or not isinstance(data["points"][point], dict) \
        or not isinstance(data["points"][point].get("hparams"), dict):
    sys.exit(f"sweep.json has no point {point} with an hparams object")
values = {}
for key in keys:
    if key in data["spec"]:
        if not isinstance(data["spec"][key], str):
            sys.exit(f"sweep.json spec value {key} must be text")
        values[key] = data["spec"][key]
values["hparams"] = json.dumps(data["points"][point]["hparams"], sort_keys=True)
base = url.rsplit("/", 1)[0]
values["job-dir"] = f"{base}/points/{point}"
for key, value in values.items():
    (pathlib.Path(out) / key).write_text(value)
(pathlib.Path(out) / ".keys").write_text("".join(f"{key}\n" for key in values))
print(point)
'

BATCH_FAILED=0

# --- startup.sh's hooks, redefined for a Batch task --------------------------------------------
# startup::metadata_keys : the settings this task has, one name per line.
startup::metadata_keys() {
  cat -- "${BATCH_SOURCE_DIR}/.keys"
}

# startup::fetch KEY : the setting KEY (one of ours) into ${STARTUP_VALUES_DIR}/KEY.
startup::fetch() {
  cp -- "${BATCH_SOURCE_DIR}/$1" "${STARTUP_VALUES_DIR}/$1"
}

startup::poweroff() {
  startup::log "the task ends here (Batch deletes its VM)"
}

startup::wait_for_shutdown() {
  startup::log "notice checkpoint saved: ending the task with ${EX_NOTICE_SAVED} so that Batch runs it again on a new VM"
  exit "${EX_NOTICE_SAVED}"
}

startup::wait_for_lease() {
  local seconds
  seconds="$(startup::lease_wait_seconds)"
  startup::log "the job dir's LEASE is held by another writer; trying again in ${seconds}s (its stale limit)"
  sleep "${seconds}" &
  wait $! || true
  if ((STARTUP_STOPPING)); then
    startup::wait_for_shutdown
  fi
}

startup::mark_failed() {
  local reason="$1"
  BATCH_FAILED=1
  startup::log "FAILED: ${reason}"
  if ! "${STARTUP_PYTHON}" -m trainer.jobdir mark-failed "${STARTUP_JOB_DIR}" --reason "${reason}" 2>&1 | startup::prefix; then
    startup::log "could not write FAILED into ${STARTUP_JOB_DIR}"
  fi
}

# --- where the settings come from ----------------------------------------------------------------
# batch::from_environment : SURVIVAL_<KEY> → ${BATCH_SOURCE_DIR}/<key>, copied verbatim.
batch::from_environment() {
  local key var
  : >"${BATCH_SOURCE_DIR}/.keys"
  for key in "${BATCH_KEYS[@]}"; do
    var="SURVIVAL_${key^^}"
    var="${var//-/_}"
    if [[ -v "${var}" ]]; then
      printf '%s' "${!var}" >"${BATCH_SOURCE_DIR}/${key}"
      printf '%s\n' "${key}" >>"${BATCH_SOURCE_DIR}/.keys"
    fi
  done
}

# batch::from_sweep PYTHON : the point of BATCH_TASK_INDEX from SURVIVAL_SWEEP's sweep.json.
batch::from_sweep() {
  local python="$1" sweep="${SURVIVAL_SWEEP}" order="${SURVIVAL_SWEEP_POINTS:-}"
  local task="${BATCH_TASK_INDEX:-}" file="${BATCH_SOURCE_DIR}/.sweep.json" err="${BATCH_SOURCE_DIR}/.error" point
  local LC_ALL=C
  if [[ ! "${sweep}" =~ ${BATCH_RE_SWEEP} || "${sweep}/" == */../* ]]; then
    startup::log "validation error: SURVIVAL_SWEEP must be a gs://BUCKET/.../sweep.json object"
    return 1
  fi
  if [[ ! "${task}" =~ ${BATCH_RE_INDEX} ]]; then
    startup::log "validation error: BATCH_TASK_INDEX must be a task index (Batch sets it)"
    return 1
  fi
  if ((${#order} > BATCH_MAX_POINTS_BYTES)) || [[ -n "${order}" && ! "${order}" =~ ${BATCH_RE_POINTS} ]]; then
    startup::log "validation error: SURVIVAL_SWEEP_POINTS must be point indexes like 0,3,5"
    return 1
  fi
  if ! "${python}" -m trainer.codefetch download "${sweep}" "${file}" \
    --max-bytes "${BATCH_MAX_SWEEP_BYTES}" 2>"${err}" | startup::prefix; then
    startup::log "cannot read ${sweep}: $(tail -n 1 "${err}" | head -c 300)"
    return 1
  fi
  if ! point="$("${python}" -I -c "${BATCH_SWEEP_PICK}" "${file}" "${task}" "${order}" "${sweep}" \
    "${BATCH_SOURCE_DIR}" 2>"${err}")"; then
    startup::log "validation error: $(tail -n 1 "${err}" | head -c 300)"
    return 1
  fi
  startup::log "task ${task} of the sweep runs point ${point}"
}

batch::main() {
  umask 022
  mkdir -p "${STARTUP_STATE_DIR}" "${STARTUP_LOG_DIR}" "${STARTUP_RUN_DIR}"
  rm -rf -- "${BATCH_SOURCE_DIR}"
  mkdir -p "${BATCH_SOURCE_DIR}"
  chmod 0700 "${BATCH_SOURCE_DIR}"
  startup::log "Batch task ${BATCH_TASK_INDEX:-?} of job ${BATCH_JOB_UID:-?} (retry attempt ${BATCH_TASK_RETRY_ATTEMPT:-?})"
  if [[ -n "${SURVIVAL_SWEEP:-}" ]]; then
    local python
    python="$(startup::python)"
    if ! batch::from_sweep "${python}"; then
      startup::log "cannot run this sweep task; it fails"
      exit "${BATCH_EX_FAILED}"
    fi
  else
    batch::from_environment
  fi
  startup::main
  if ((BATCH_FAILED)); then
    exit "${BATCH_EX_FAILED}"
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  batch::main "$@"
fi
