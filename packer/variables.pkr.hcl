# Every input of the GPU image template. Validation uses regex_replace(x, "^...$", "") == "" as a
# full-match test because Packer 1.6.6 (Debian's) has no regex()/can(regex()).
# Nothing project-, zone- or bucket-specific has a default:
# `invoke bake-image` passes them from the `survival` settings (invoke.yaml); see
# packer/example.pkrvars.hcl for a complete example.

# --- both builds -------------------------------------------------------------------------------

variable "image_family" {
  type        = string
  default     = "gce-survival-kit"
  description = "Image family the baked image joins; `invoke train` boots the newest image of it."
  validation {
    condition     = regex_replace(var.image_family, "^[a-z]([-a-z0-9]{0,48}[a-z0-9])?$", "") == ""
    error_message = "The image_family must be lowercase letters, digits and dashes, start with a letter, at most 50 characters (a 15-character timestamp is appended)."
  }
}

variable "image_name" {
  type        = string
  default     = ""
  description = "Image name; empty means <image_family>-<UTC timestamp YYYYMMDDhhmmss>."
  validation {
    condition     = var.image_name == "" || regex_replace(var.image_name, "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", "") == ""
    error_message = "The image_name must be empty or a GCE resource name (lowercase letters, digits, dashes; at most 63)."
  }
}

variable "kit_commit" {
  type        = string
  default     = "unknown"
  description = "Git commit of the kit the image was baked from (image label survival-kit-commit)."
  validation {
    condition     = regex_replace(var.kit_commit, "^[a-z0-9_-]{1,63}$", "") == ""
    error_message = "The kit_commit must be a GCE label value: lowercase letters, digits, _ or -, at most 63."
  }
}

variable "manifest_path" {
  type        = string
  default     = "packer-manifest.json"
  description = "Where the manifest post-processor records what was built (read by invoke bake-image)."
}

# --- gce build (source.googlecompute.gpu) --------------------------------------------------

variable "project_id" {
  type        = string
  default     = ""
  description = "GCP project that runs the build VM and owns the image (survival.project). Required for the gce build."
}

variable "zone" {
  type        = string
  default     = ""
  description = "Zone of the build VM; it must offer accelerator_type (survival.zones[0]). Required for the gce build."
}

variable "source_image_family" {
  type        = string
  default     = "debian-12"
  description = "Public base image family: debian-12 (project debian-cloud) or ubuntu-2204-lts (ubuntu-os-cloud)."
  validation {
    condition     = contains(["debian-12", "ubuntu-2204-lts"], var.source_image_family)
    error_message = "The source_image_family must be debian-12 or ubuntu-2204-lts (the OSes provisioning/nvidia-driver.sh supports)."
  }
}

variable "machine_type" {
  type        = string
  default     = "n1-standard-4"
  description = "Machine type of the build VM (N1 for T4/V100/P100/P4 GPUs; A2/G2 come with their GPUs)."
}

variable "accelerator_type" {
  type        = string
  default     = "nvidia-tesla-t4"
  description = "GPU attached to the build VM so the driver is installed and checked with nvidia-smi; empty for a CPU-only image."
  validation {
    condition     = var.accelerator_type == "" || regex_replace(var.accelerator_type, "^nvidia-[a-z0-9-]+$", "") == ""
    error_message = "The accelerator_type must be empty or an accelerator type name such as nvidia-tesla-t4 or nvidia-l4."
  }
}

variable "accelerator_count" {
  type        = number
  default     = 1
  description = "Number of GPUs on the build VM (0 with an empty accelerator_type)."
  validation {
    condition     = contains([0, 1, 2, 4, 8], var.accelerator_count)
    error_message = "The accelerator_count must be 0, 1, 2, 4 or 8."
  }
}

variable "nvidia_kernel_modules" {
  type        = string
  default     = "auto"
  description = "NVIDIA kernel modules: open (nvidia-open; Turing and newer, required on Blackwell), proprietary (cuda-drivers; Maxwell/Pascal/Volta), or auto (proprietary for K80/P4/P100/V100, open otherwise)."
  validation {
    condition     = contains(["auto", "open", "proprietary"], var.nvidia_kernel_modules)
    error_message = "The nvidia_kernel_modules must be auto, open or proprietary."
  }
}

variable "disk_size_gb" {
  type        = number
  default     = 50
  description = "Boot disk size of the image in GB (the driver, CUDA and TensorFlow need about 30)."
  validation {
    condition     = var.disk_size_gb >= 30 && var.disk_size_gb <= 2000
    error_message = "The disk_size_gb must be between 30 and 2000."
  }
}

variable "service_account_email" {
  type        = string
  default     = ""
  description = "Service account of the build VM; empty means the project's default compute service account."
}

variable "use_os_login" {
  type        = bool
  default     = false
  description = "Let Packer connect through OS Login (for projects that enforce enable-oslogin)."
}

variable "build_preemptible" {
  type        = bool
  default     = false
  description = "Run the build VM as preemptible (on_host_maintenance is then TERMINATE); the driver installer's step markers make a retried bake resume."
}

# --- local build (source.null.local) -------------------------------------------------------

variable "local_images_dir" {
  type        = string
  default     = ""
  description = "Absolute directory that receives local images (<local_state_dir>/images). Required for the local build."
}

variable "localgce_state_dir" {
  type        = string
  default     = ""
  description = "localgce state directory (its endpoints.json) where the local image is registered. Required for the local build."
}

variable "kit_python" {
  type        = string
  default     = "python3"
  description = "The kit's Python (the orchestrator's venv) that registers the local image with localgce."
}

variable "pip_cache_dir" {
  type        = string
  default     = ""
  description = "pip cache kept between local bakes so re-bakes do not download again; empty for pip's default."
}
