# LabDesk lab image with Packer (QEMU builder): boots a Debian 12 cloud image (qcow2) that YOU provide,
# runs customize.sh (which runs course-software.sh last) in it, and shuts it down; the result is
# <output_directory>/debian-lab-<variant>.qcow2.
#
#   packer init desktop-images/recipes/debian-lab/packer        # Packer >= 1.7: fetches the qemu plugin
#   packer build \
#     -var base_image_url=file:///srv/images/debian-12-genericcloud-amd64.qcow2 \
#     -var base_image_checksum=sha512:<checksum of that file> \
#     -var variant=terminal \
#     desktop-images/recipes/debian-lab/packer
#
# No download host is written here: take the Debian 12 "genericcloud" (or "generic") qcow2 and its
# SHA512SUMS from your Debian cloud image mirror, or use a qcow2 made by ../build-image.sh.
# Needs KVM (or set accelerator=tcg, slow) and xorriso or mkisofs for the cloud-init seed CD.
# The build signs in as a temporary "packer" user created by the seed; the shutdown command deletes it.

packer {
  required_version = ">= 1.7.0"
  required_plugins {
    qemu = {
      version = ">= 1.0.0"
      source  = "github.com/hashicorp/qemu"
    }
  }
}

variable "base_image_url" {
  type        = string
  description = "URL or file:// path of a Debian 12 cloud qcow2 (no default: choose your mirror)."
}

variable "base_image_checksum" {
  type        = string
  description = "Its checksum, e.g. sha512:<hex>, or file:<url of SHA512SUMS>."
}

variable "variant" {
  type        = string
  default     = "desktop"
  description = "desktop (XFCE, xrdp, TigerVNC) or terminal (no X)."
  validation {
    condition     = contains(["desktop", "terminal"], var.variant)
    error_message = "The variant must be desktop or terminal."
  }
}

variable "disk_size" {
  type    = string
  default = "8G"
}

variable "memory" {
  type    = number
  default = 2048
}

variable "cpus" {
  type    = number
  default = 2
}

variable "accelerator" {
  type    = string
  default = "kvm"
}

variable "output_directory" {
  type    = string
  default = "build/packer"
}

variable "build_password" {
  type        = string
  sensitive   = true
  default     = "labdesk-packer-build"
  description = "Password of the temporary build user (exists only while Packer runs; deleted at the end)."
}

locals {
  recipe         = "${path.root}/.."
  seed_user_data = <<-EOT
    #cloud-config
    users:
      - name: packer
        shell: /bin/bash
        sudo: "ALL=(ALL) NOPASSWD:ALL"
        lock_passwd: false
        plain_text_passwd: "${var.build_password}"
    ssh_pwauth: true
  EOT
}

source "qemu" "debian-lab" {
  iso_url          = var.base_image_url
  iso_checksum     = var.base_image_checksum
  disk_image       = true
  disk_size        = var.disk_size
  format           = "qcow2"
  disk_compression = true
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  accelerator      = var.accelerator
  memory           = var.memory
  cpus             = var.cpus
  headless         = true
  output_directory = var.output_directory
  vm_name          = "debian-lab-${var.variant}.qcow2"

  cd_label = "cidata"
  cd_content = {
    "meta-data" = "instance-id: labdesk-packer-build\nlocal-hostname: labdesk-lab\n"
    "user-data" = local.seed_user_data
  }

  communicator = "ssh"
  ssh_username = "packer"
  ssh_password = var.build_password
  ssh_timeout  = "20m"
  # customize.sh removed the host keys and ran `cloud-init clean`; the next boot starts afresh.
  shutdown_command = "sudo sh -c 'rm -f /etc/sudoers.d/90-cloud-init-users; userdel --force --remove packer; shutdown -P now'"
}

build {
  sources = ["source.qemu.debian-lab"]

  provisioner "shell" {
    inline = ["rm -rf /tmp/labdesk-recipe", "mkdir -p /tmp/labdesk-recipe"]
  }

  provisioner "file" {
    sources = [
      "${local.recipe}/customize.sh",
      "${local.recipe}/course-software.sh",
      "${local.recipe}/files",
    ]
    destination = "/tmp/labdesk-recipe/"
  }

  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    inline = [
      "bash /tmp/labdesk-recipe/customize.sh --variant ${var.variant}",
      "rm -rf /tmp/labdesk-recipe",
    ]
  }
}
