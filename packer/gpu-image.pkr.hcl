# The kit's training image, baked two ways from the same provisioning scripts:
#   gce.googlecompute.gpu  a GCE image: NVIDIA driver + CUDA, the Python environment, the trainer
#   local.null.local       a localgce image directory: the same Python environment (CPU build)
# Select one with `packer build -only=gce.googlecompute.gpu` or `-only=local.null.local`;
# `invoke bake-image --backend gce|local` does that and reads the manifest afterwards.

locals {
  # One timestamp per run, so the image name and its labels agree.
  timestamp = formatdate("YYYYMMDDhhmmss", timestamp())
  # Image name = family + UTC timestamp unless given.
  image_name = var.image_name != "" ? var.image_name : "${var.image_family}-${local.timestamp}"

  # The public project that publishes each supported source family.
  source_image_projects = {
    "debian-12"       = "debian-cloud"
    "ubuntu-2204-lts" = "ubuntu-os-cloud"
  }

  # Pinned versions come from provisioning/versions.env (the one place they live), parsed here
  # for the image labels (regex_replace: Packer 1.6.6 has no regex()). Label values allow
  # [a-z0-9_-] only, so dots become dashes.
  driver_branch   = regex_replace(file("${abspath(path.root)}/../provisioning/versions.env"), "(?s)^.*\\nNVIDIA_DRIVER_BRANCH=([0-9]+)\\n.*$", "$1")
  cuda_version    = regex_replace(file("${abspath(path.root)}/../provisioning/versions.env"), "(?s)^.*\\nCUDA_VERSION=([0-9.]+)\\n.*$", "$1")
  tf_version      = regex_replace(file("${abspath(path.root)}/../provisioning/versions.env"), "(?s)^.*\\nTENSORFLOW_VERSION=([0-9.]+)\\n.*$", "$1")
  sklearn_version = regex_replace(file("${abspath(path.root)}/../provisioning/versions.env"), "(?s)^.*\\nSKLEARN_VERSION=([0-9.]+)\\n.*$", "$1")
  has_gpu         = var.accelerator_type != "" && var.accelerator_count > 0

  labels = {
    "survival-kit-commit" = var.kit_commit
    "nvidia-driver"       = local.has_gpu ? local.driver_branch : "none"
    "cuda"                = local.has_gpu ? replace(local.cuda_version, ".", "-") : "none"
    "tensorflow"          = replace(local.tf_version, ".", "-")
    "scikit-learn"        = replace(local.sklearn_version, ".", "-")
  }

  # NVIDIA's open kernel modules need Turing or newer (and are the only choice on Blackwell);
  # Maxwell, Pascal and Volta GPUs (P4, P100, V100, K80) need the proprietary ones.
  pre_turing_accelerators = ["nvidia-tesla-k80", "nvidia-tesla-p4", "nvidia-tesla-p100", "nvidia-tesla-v100"]
  nvidia_kernel_modules = var.nvidia_kernel_modules != "auto" ? var.nvidia_kernel_modules : (
    contains(local.pre_turing_accelerators, var.accelerator_type) ? "proprietary" : "open"
  )

  # The accelerator must be named by its zonal URL.
  accelerator_type = local.has_gpu ? "projects/${var.project_id}/zones/${var.zone}/acceleratorTypes/${var.accelerator_type}" : ""

  # Where the provisioning scripts and the trainer package land on the build VM. /run is a tmpfs,
  # so nothing copied there is captured in the image.
  remote_provisioning = "/run/survival-provisioning"
  remote_kit          = "/run/survival-kit"

  # The kit checkout this template lives in (absolute: Packer versions resolve relative paths
  # differently), and the local image directory.
  kit_root        = abspath("${abspath(path.root)}/..")
  local_image_dir = "${var.local_images_dir}/${local.image_name}"
}

source "googlecompute" "gpu" {
  project_id              = var.project_id
  zone                    = var.zone
  source_image_family     = var.source_image_family
  source_image_project_id = [local.source_image_projects[var.source_image_family]]
  machine_type            = var.machine_type
  disk_size               = var.disk_size_gb
  accelerator_type        = local.accelerator_type
  accelerator_count       = local.has_gpu ? var.accelerator_count : 0
  # GPUs cannot live-migrate, and a preemptible VM is never migrated: GCE (and Packer's
  # validation) require TERMINATE for both. Only an on-demand CPU-only build VM migrates.
  on_host_maintenance   = local.has_gpu || var.build_preemptible ? "TERMINATE" : "MIGRATE"
  preemptible           = var.build_preemptible
  service_account_email = var.service_account_email
  use_os_login          = var.use_os_login
  ssh_username          = "packer"
  image_name            = local.image_name
  image_family          = var.image_family
  image_description     = "GCE Survival Kit training image (driver ${local.driver_branch}, CUDA ${local.cuda_version}, TensorFlow ${local.tf_version})"
  image_labels          = local.labels
  labels                = { "survival-kit-bake" = "true" }
}

source "null" "local" {
  # No machine to talk to: every step is a shell-local provisioner on this machine.
  communicator = "none"
}

build {
  name    = "gce"
  sources = ["source.googlecompute.gpu"]

  provisioner "shell" {
    inline = ["sudo mkdir -p ${local.remote_provisioning} ${local.remote_kit}", "sudo chown \"$(id -u)\" ${local.remote_provisioning} ${local.remote_kit}"]
  }

  provisioner "file" {
    source      = "${local.kit_root}/provisioning/"
    destination = local.remote_provisioning
  }

  # Values reach the scripts as environment variables (Packer quotes them); the scripts never
  # evaluate them. Stage 1: the guest setup and, with a GPU, the driver installer's kernel stage
  # (the newest kernel of the running series and its headers), which ends by rebooting the VM.
  provisioner "shell" {
    environment_vars = [
      "SURVIVAL_PROVISIONING=${local.remote_provisioning}",
      "SURVIVAL_GPU=${local.has_gpu ? "1" : "0"}",
    ]
    execute_command   = "chmod +x '{{ .Path }}'; sudo env {{ .Vars }} bash '{{ .Path }}'"
    expect_disconnect = true
    inline = [
      "set -euo pipefail",
      "chmod +x \"$SURVIVAL_PROVISIONING\"/*.sh",
      "\"$SURVIVAL_PROVISIONING/guest-setup.sh\"",
      "if [ \"$SURVIVAL_GPU\" = 1 ]; then \"$SURVIVAL_PROVISIONING/nvidia-driver.sh\" --stage kernel; fi",
    ]
  }

  # Stage 2, after the reboot: wait for the VM to go down, then reconnect (start_retry_timeout
  # covers the boot). /run is a tmpfs, so the reboot emptied it: upload the scripts again.
  provisioner "shell" {
    pause_before        = "30s"
    start_retry_timeout = "15m"
    inline              = ["sudo mkdir -p ${local.remote_provisioning} ${local.remote_kit}", "sudo chown \"$(id -u)\" ${local.remote_provisioning} ${local.remote_kit}"]
  }

  provisioner "file" {
    source      = "${local.kit_root}/provisioning/"
    destination = local.remote_provisioning
  }

  # The trainer package at the baked commit, so VMs can run it from the image's environment.
  provisioner "file" {
    source      = "${local.kit_root}/trainer"
    destination = local.remote_kit
  }

  # The driver stage (repository, driver, CUDA, nvidia-smi) on the new kernel, then the Python
  # environment, the checks and the scrub.
  provisioner "shell" {
    environment_vars = [
      "SURVIVAL_PROVISIONING=${local.remote_provisioning}",
      "SURVIVAL_KIT=${local.remote_kit}",
      "SURVIVAL_GPU=${local.has_gpu ? "1" : "0"}",
      "NVIDIA_KERNEL_MODULES=${local.nvidia_kernel_modules}",
      "PYTHON_ENV_FLAVOR=${local.has_gpu ? "gpu" : "cpu"}",
    ]
    execute_command = "chmod +x '{{ .Path }}'; sudo env {{ .Vars }} bash '{{ .Path }}'"
    inline = [
      "set -euo pipefail",
      "chmod +x \"$SURVIVAL_PROVISIONING\"/*.sh",
      "if [ \"$SURVIVAL_GPU\" = 1 ]; then \"$SURVIVAL_PROVISIONING/nvidia-driver.sh\" --stage driver --modules \"$NVIDIA_KERNEL_MODULES\"; fi",
      "\"$SURVIVAL_PROVISIONING/python-env.sh\" --prefix /opt/survival/venv --flavor \"$PYTHON_ENV_FLAVOR\" --trainer-src \"$SURVIVAL_KIT\"",
      "\"$SURVIVAL_PROVISIONING/verify.sh\" --root / --checks env,gpu,trainer --expect-gpu auto",
      "\"$SURVIVAL_PROVISIONING/cleanup.sh\" --root /",
      "\"$SURVIVAL_PROVISIONING/verify.sh\" --root / --checks secrets",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      backend      = "gce"
      image_name   = local.image_name
      image_family = var.image_family
      project      = var.project_id
    }
  }
}

build {
  name    = "local"
  sources = ["source.null.local"]

  # The Python-environment part of the same provisioning, into a new image directory, then
  # scrubbed, verified and registered with localgce (images.insert, rawDisk.source = the directory).
  provisioner "shell-local" {
    environment_vars = [
      "SURVIVAL_PROVISIONING=${local.kit_root}/provisioning",
      "SURVIVAL_KIT=${local.kit_root}",
      "IMAGE_DIR=${local.local_image_dir}",
      "IMAGE_NAME=${local.image_name}",
      "IMAGE_FAMILY=${var.image_family}",
      "KIT_COMMIT=${var.kit_commit}",
      "KIT_PYTHON=${var.kit_python}",
      "LOCALGCE_STATE_DIR=${var.localgce_state_dir}",
      "PIP_CACHE_DIR=${var.pip_cache_dir}",
    ]
    inline_shebang = "/bin/bash -e"
    inline = [
      "set -euo pipefail",
      "test -n \"$IMAGE_DIR\" -a -n \"$LOCALGCE_STATE_DIR\" || { echo 'local build: set local_images_dir and localgce_state_dir' >&2; exit 2; }",
      "\"$SURVIVAL_PROVISIONING/python-env.sh\" --prefix \"$IMAGE_DIR/venv\" --flavor cpu --trainer-src \"$SURVIVAL_KIT\"",
      "\"$SURVIVAL_PROVISIONING/cleanup.sh\" --root \"$IMAGE_DIR\"",
      "\"$SURVIVAL_PROVISIONING/verify.sh\" --root \"$IMAGE_DIR\" --python \"$IMAGE_DIR/venv/bin/python\" --expect-gpu no",
      "\"$KIT_PYTHON\" -m survival.bake register --state-dir \"$LOCALGCE_STATE_DIR\" --name \"$IMAGE_NAME\" --family \"$IMAGE_FAMILY\" --source \"$IMAGE_DIR\" --label \"survival-kit-commit=$KIT_COMMIT\"",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      backend      = "local"
      image_name   = local.image_name
      image_family = var.image_family
      image_dir    = local.local_image_dir
    }
  }
}
