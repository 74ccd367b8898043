# The Packer version this template needs. Deliberately no `required_plugins` block: the Debian
# package (Packer 1.6.6) has the googlecompute and null builders built in and rejects that block.
# On Packer >= 1.8 `invoke bake-image` installs github.com/hashicorp/googlecompute when missing.
#
# Which binaries work for the gce build: Debian's packer 1.6.6 package (built against Debian's
# golang.org/x/crypto, which signs with rsa-sha2) and upstream HashiCorp releases >= 1.8.1.
# Upstream binaries older than 1.8.1 cannot SSH into guests running OpenSSH >= 8.8 (Debian 12,
# Ubuntu 22.04), which refuse their ssh-rsa (SHA-1) signatures (docs/images.md), so the
# constraint below alone does not make an upstream 1.6.6-1.8.0 binary usable.
packer {
  required_version = ">= 1.6.6"
}
