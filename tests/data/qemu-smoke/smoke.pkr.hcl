# Hand-made Packer 1.6.6 template: the proven recipe for the local qemu target.
# Boots the cached Debian base disk under TCG with a direct kernel boot, logs in as the
# "packer" user a NoCloud seed (cd_files, label cidata) creates, installs grub with
# Ansible, removes the build user on shutdown and writes a compressed qcow2 + manifest.

variable "base_disk" {
  type = string
}

variable "kernel" {
  type = string
}

variable "initrd" {
  type = string
}

variable "kernel_cmdline" {
  type = string
}

variable "seed_files" {
  type = list(string)
}

variable "ssh_private_key_file" {
  type = string
}

variable "output_directory" {
  type = string
}

variable "serial_log" {
  type = string
}

variable "build_key" {
  type = string
}

variable "playbook" {
  type = string
}

variable "manifest" {
  type = string
}

source "qemu" "smoke" {
  disk_image         = true
  iso_url            = var.base_disk
  iso_checksum       = "none"
  use_backing_file   = false
  disk_size          = "4096M"
  format             = "qcow2"
  disk_compression   = true
  skip_compaction    = false
  disk_interface     = "virtio"
  disk_discard       = "unmap"
  disk_detect_zeroes = "unmap"
  net_device         = "virtio-net"
  accelerator        = "tcg"
  headless           = true
  memory             = 2048
  cpus               = 2
  cd_files           = var.seed_files
  cd_label           = "cidata"
  boot_wait          = "1s"
  qemuargs = [
    ["-kernel", var.kernel],
    ["-initrd", var.initrd],
    ["-append", var.kernel_cmdline],
    ["-serial", "file:${var.serial_log}"],
  ]
  communicator         = "ssh"
  ssh_username         = "packer"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "30m"
  shutdown_command     = "sudo sh -c 'userdel --force --remove packer; rm -f /etc/sudoers.d/90-cloud-init-users; shutdown -P now'"
  shutdown_timeout     = "10m"
  output_directory     = var.output_directory
  vm_name              = "smoke.qcow2"
}

build {
  sources = ["source.qemu.smoke"]

  # Cloud-init creates the build user and may restart sshd: let it finish first.
  provisioner "shell" {
    inline = ["cloud-init status --wait --long"]
  }

  provisioner "ansible" {
    playbook_file    = var.playbook
    user             = "packer"
    use_proxy        = false
    ansible_env_vars = ["ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_NOCOLOR=1"]
    extra_arguments  = ["--extra-vars", "build_key=${var.build_key}"]
  }

  post-processor "manifest" {
    output     = var.manifest
    strip_path = false
  }
}
