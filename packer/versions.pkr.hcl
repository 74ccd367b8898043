# The Packer version this template needs. Deliberately no `required_plugins` block: the Debian
# package (Packer 1.6.6) has the googlecompute and null builders built in and rejects that block.
# On Packer >= 1.8 `invoke bake-image` installs github.com/hashicorp/googlecompute when missing.
packer {
  required_version = ">= 1.6.6"
}
