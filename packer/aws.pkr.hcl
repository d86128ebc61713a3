# The aws target's bake: one amazon-ebs build running the same playbooks/IMAGE.yml (same roles) as the local target.
#
# bake.py (bakery/builders/packer.py) passes every variable below in a var file under .bakery/runs/<run-id>/;
# run it by hand only to debug: packer build -var-file=.bakery/runs/<run-id>/packer.vars.json packer/aws.pkr.hcl
#
# Written for Packer 1.6.6 (Debian 12's package). That version has no `metadata_options` block, so the build
# instance cannot be launched with IMDSv2 required; bake.py instead marks every AMI it registers ImdsSupport=v2.0,
# so every instance launched from it requires IMDSv2 (and the aws fleet's launch templates require it as well).
# With Packer >= 1.7 (amazon plugin) add to the source: metadata_options { http_tokens = "required" }.
#
# No ami_description, ami_users, ami_groups, snapshot_users or snapshot_groups here: bake.py sets the description and
# the sharing itself once Packer is done. Packer 1.6.6 (tag v1.6.6, builder/amazon/ebs/builder.go, Run's step list)
# runs StepModifyAMIAttributes (common/step_modify_ami_attributes.go: ModifyImageAttribute for the description and
# ami_users, ModifySnapshotAttribute for snapshot_users) *before* StepCreateTags (common/step_create_tags.go), and its
# stepCreateAMI (ebs/step_create_ami.go) sends CreateImage without tags. So those calls would hit an AMI and snapshots
# not yet tagged bakery:managed=true, which docs/aws-iam-policy.json refuses to modify; the AMI would stay, untagged.
#
# No ami_regions, region_kms_key_ids, encrypt_boot or AMI-level kms_key_id either: Packer builds in the home region
# only and bake.py copies the tagged AMI to aws.regions itself (bakery/aws/distribute.py: CopyImage with the tags in
# TagSpecifications and the region's key). With encrypt_boot, stepCreateAMI registers an intermediate AMI named
# random.AlphaNum(7) that StepAMIRegionCopy's Cleanup deregisters untagged (DestroyAMIs), and StepAMIRegionCopy's
# CopyImage carries no tags: both are refused by the policy, and a refused clean-up fails the build and leaks an AMI
# no name finds. The AMI's snapshot is encrypted all the same: the build volume (launch_block_device_mappings) is
# encrypted with var.kms_key_id, and CreateImage snapshots it under that key.
# What Packer does here: RunInstances (run_tags), CreateImage (named var.ami_name), CreateTags (tags, snapshot_tags);
# then bake.py sets ImdsSupport, Description and launch/create-volume permission for aws.accounts, and copies.

variable "region" {
  type        = string
  description = "Home region: the build instance runs here and the AMI is registered here (bake.py copies it to the others)."
}

variable "source_ami" {
  type        = string
  description = "Base AMI id, resolved by bake.py from aws.base_ami or the public SSM parameter aws.base_ami_parameter."
}

variable "instance_type" {
  type = string
}

variable "ssh_username" {
  type = string
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Empty: the default VPC's subnet."
}

variable "security_group_ids" {
  type        = list(string)
  default     = []
  description = "Empty: Packer 1.6.6 creates a temporary group open to SSH from 0.0.0.0/0 (key-only, for the build's duration); set aws.security_group_ids to narrow it."
}

variable "iam_instance_profile" {
  type    = string
  default = ""
}

variable "volume_size" {
  type = number
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "The build volume's key, hence the AMI snapshot's. Empty: the account's default EBS key (an AMI encrypted with it cannot be shared with other accounts)."
}

variable "root_device_name" {
  type        = string
  description = "The base AMI's root device (/dev/xvda, /dev/sda1, ...), looked up by bake.py: the encrypted volume must replace it, not add one."
}

variable "ami_name" {
  type = string
}

variable "tags" {
  type        = map(string)
  description = "Provenance tags (bakery/aws/tags.py, already sanitised) put on the AMI and its snapshots."
}

variable "run_tags" {
  type        = map(string)
  description = "Tags on the build instance, so a leftover can be traced to its bake."
}

variable "playbook_file" {
  type = string
}

variable "ansible_command" {
  type        = string
  description = "The ansible-playbook of bakery's virtual environment."
}

variable "ansible_extra_vars_file" {
  type        = string
  description = "JSON file of extra vars: bakery_image, bakery_target, -e values, artifact paths and digests."
}

variable "ansible_groups" {
  type        = list(string)
  description = "Inventory groups of the build instance: every group the playbook's plays name in hosts:, so every play applies."
}

variable "ansible_env_vars" {
  type = list(string)
}

variable "image_release_file" {
  type        = string
  description = "/etc/image-release for this version, rendered by bake.py from the provenance."
}

variable "runtime_env_file" {
  type        = string
  description = "A neutral runtime config (ENVIRONMENT=verify), present only while the image is checked on the build instance."
}

variable "testinfra_script" {
  type        = string
  description = "packer/testinfra.sh, run as an ansible provisioner's command so it reaches the instance through Packer's adapter."
}

variable "testinfra_env" {
  type        = list(string)
  description = "KEY=VALUE lines for packer/testinfra.sh: python, test files, junit path, BAKERY_VERIFY_*."
}

variable "manifest_path" {
  type = string
}

source "amazon-ebs" "image" {
  region               = var.region
  source_ami           = var.source_ami
  instance_type        = var.instance_type
  subnet_id            = var.subnet_id
  security_group_ids   = var.security_group_ids
  iam_instance_profile = var.iam_instance_profile

  communicator              = "ssh"
  ssh_username              = var.ssh_username
  ssh_clear_authorized_keys = true
  ssh_timeout               = "10m"

  launch_block_device_mappings {
    device_name           = var.root_device_name
    volume_size           = var.volume_size
    volume_type           = "gp3"
    throughput            = 125
    iops                  = 3000
    encrypted             = true
    kms_key_id            = var.kms_key_id
    delete_on_termination = true
  }
  # No encrypt_boot, AMI-level kms_key_id, region_kms_key_ids or ami_regions: no intermediate AMI, no untagged copy
  # (see the top of this file). Packer 1.6.6 validates only those two key settings (ValidateKmsKey in
  # common/ami_config.go, which refuses multi-Region key ids); the launch volume's kms_key_id goes to EC2 unchecked.

  # no ami_description / ami_users / snapshot_users: bake.py sets them after Packer's tags (see the top of this file)
  ami_name        = var.ami_name
  tags            = var.tags
  snapshot_tags   = var.tags
  run_tags        = var.run_tags
}

build {
  sources = ["source.amazon-ebs.image"]

  # 1. The image definition, exactly as the local target runs it. Through Packer's SSH adapter (use_proxy), which
  #    rides Packer's own connection: the bake goes on even after a role closes sshd to new logins.
  provisioner "ansible" {
    playbook_file    = var.playbook_file
    command          = var.ansible_command
    user             = var.ssh_username
    groups           = var.ansible_groups
    use_proxy        = true
    extra_arguments  = ["--extra-vars", "@${var.ansible_extra_vars_file}"]
    ansible_env_vars = var.ansible_env_vars
  }

  # 2. Provenance inside the image, and a neutral runtime config for the checks below only.
  provisioner "file" {
    source      = var.image_release_file
    destination = "/tmp/bakery-image-release"
  }

  provisioner "file" {
    source      = var.runtime_env_file
    destination = "/tmp/bakery-runtime.env"
  }

  provisioner "shell" {
    inline = [
      "sudo install -m 0644 -o root -g root /tmp/bakery-image-release /etc/image-release",
      "sudo install -D -m 0640 -o root -g root /tmp/bakery-runtime.env /etc/bakery/launch/runtime.env",
      "rm -f /tmp/bakery-image-release /tmp/bakery-runtime.env",
      "if systemctl cat bakery-runtime-config.service >/dev/null 2>&1; then sudo systemctl restart bakery-runtime-config.service; fi",
    ]
  }

  # 3. The image's testinfra suite and its roles' Molecule tests, run from this machine through the same adapter
  #    (nothing is installed on the instance). Failing tests do not stop the bake: bake.py records the report as
  #    the version's verification, which the deploy gate reads.
  provisioner "ansible" {
    playbook_file    = var.playbook_file
    command          = var.testinfra_script
    user             = var.ssh_username
    use_proxy        = true
    ansible_env_vars = var.testinfra_env
  }

  # 4. Nothing of the bake or the checks stays in the image (Packer also removes its key: ssh_clear_authorized_keys).
  provisioner "shell" {
    inline = [
      "sudo rm -f /etc/bakery/launch/runtime.env /run/bakery/runtime.env",
      "sudo cloud-init clean --logs || true",
      "sudo truncate -s 0 /etc/machine-id",
      "sudo sh -c 'rm -f /etc/ssh/ssh_host_*; rm -rf /tmp/* /var/tmp/* /root/.ansible /home/*/.ansible; find /var/log/journal -mindepth 1 -delete; true'",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
  }
}
