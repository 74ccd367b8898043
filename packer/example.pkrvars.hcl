# Example variables for the gce build: `packer validate -var-file=packer/example.pkrvars.hcl packer/`.
# `invoke bake-image --backend gce` passes the same values from the `survival` settings instead.
project_id          = "my-project-123"
zone                = "us-central1-a"
image_family        = "gce-survival-kit"
source_image_family = "debian-12"
machine_type        = "n1-standard-4"
accelerator_type    = "nvidia-tesla-t4"
accelerator_count   = 1
disk_size_gb        = 50
kit_commit          = "0123456789abcdef"
use_os_login        = false
