# The example image baked the "classic" way, for the side-by-side benchmark (bench/bake_vs_packer.py):
# Packer's docker builder on podman (the podman-docker shim's `docker` must come first in PATH),
# the same base image, the same playbook and the same variables bake.py gives the webapp role,
# one commit at the end. Needs Packer >= 1.6 (Debian's 1.6.6 works).
#
#   PATH=/usr/bin:$PATH packer build -var artifact_path=... -var artifact_sha256=... \
#     -var artifact_version=... -var image_tag=packer-bench-1 packer/local.pkr.hcl

variable "base_image" {
  type    = string
  default = "localhost/bakery/base:bookworm"
}

variable "playbook" {
  type    = string
  default = "playbooks/webapp.yml"
}

variable "ansible_playbook" {
  type        = string
  default     = ".venv/bin/ansible-playbook"
  description = "the ansible-playbook to run (the project's venv has the same Ansible bake.py uses)"
}

variable "roles_path" {
  type    = string
  default = "roles"
}

variable "image_name" {
  type        = string
  default     = "webapp"
  description = "the image's name as bake.py passes it to the roles (bakery_image)"
}

variable "artifact_path" {
  type = string
}

variable "artifact_sha256" {
  type = string
}

variable "artifact_version" {
  type = string
}

variable "image_repository" {
  type    = string
  default = "localhost/bakery-bench/packer-webapp"
}

variable "image_tag" {
  type    = string
  default = "latest"
}

source "docker" "webapp" {
  image  = var.base_image
  pull   = false
  commit = true
  # Boot systemd like bake.py's build container does, so both run the same work.
  run_command = ["-d", "--systemd=always", "--hostname", "webapp-bake", "--label", "io.bakery.bench=packer", "{{.Image}}", "/sbin/init"]
  changes     = ["CMD [\"/sbin/init\"]"]
}

build {
  sources = ["source.docker.webapp"]

  provisioner "ansible" {
    command       = var.ansible_playbook
    playbook_file = var.playbook
    user          = "root"
    use_sftp      = false
    extra_arguments = [
      "--extra-vars", "bakery_image=${var.image_name} bakery_target=local ansible_become_method=su ansible_python_interpreter=/usr/bin/python3",
      "--extra-vars", "webapp_artifact_path=${var.artifact_path} webapp_artifact_sha256=${var.artifact_sha256} webapp_artifact_version=${var.artifact_version}",
      # Packer 1.6's SSH proxy only offers ssh-rsa; newer OpenSSH clients refuse it unless asked.
      "--ssh-extra-args=-o HostKeyAlgorithms=+ssh-rsa -o PubkeyAcceptedKeyTypes=+ssh-rsa",
      "--scp-extra-args=-O",
    ]
    ansible_env_vars = [
      "ANSIBLE_ROLES_PATH=${var.roles_path}",
      "ANSIBLE_HOST_KEY_CHECKING=False",
      "ANSIBLE_PIPELINING=True",
      "ANSIBLE_NOCOLOR=1",
      "ANSIBLE_SSH_TRANSFER_METHOD=scp",
    ]
  }

  post-processor "docker-tag" {
    repository = var.image_repository
    tags       = [var.image_tag]
  }
}
