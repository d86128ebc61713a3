#!/bin/sh
# The image's testinfra suite and its roles' Molecule tests against the Packer build instance, run from
# this machine through the SSH adapter Packer opens for its ansible provisioner: the same channel the
# bake used, so it works even after the image's hardening closed sshd to new logins, and nothing is
# installed on (or left in) the instance.
#
# Packer calls this as an ansible provisioner's `command`, with ansible-playbook's arguments
# (`-e ansible_ssh_private_key_file=KEY -i INVENTORY PLAYBOOK`) and first with `--version`.
# bake.py sets BAKERY_PYTHON, BAKERY_ROOT, BAKERY_TESTS, BAKERY_JUNIT, BAKERY_SUDO and the
# BAKERY_VERIFY_* variables the suites read, through ansible_env_vars.
#
# Failing tests do not fail the bake: their report (BAKERY_JUNIT) is recorded as the version's
# verification, and the deploy gate reads it. Only a check that could not run at all fails the bake.
set -eu
if [ "${1:-}" = "--version" ]; then  # Packer checks the ansible version first; bake.py puts its ansible-playbook on PATH
  command -v ansible-playbook >/dev/null || { echo "ansible-playbook not on PATH: run packer through bake.py" >&2; exit 127; }
  exec ansible-playbook --version
fi
inventory="" key=""
while [ $# -gt 0 ]; do
  case "$1" in
    -i) inventory=$2; shift ;;
    ansible_ssh_private_key_file=*) key=${1#ansible_ssh_private_key_file=} ;;
  esac
  shift
done
if [ -z "${BAKERY_TESTS:-}" ]; then
  echo "no testinfra suite for this image (tests/images/test_<image>.py) and no role Molecule tests: nothing to run"
  exit 0
fi
# Packer's inventory: "default ansible_host=127.0.0.1 ansible_user=admin ansible_port=40123"
line=$(grep -m1 'ansible_port=' "$inventory")
host=$(printf '%s\n' "$line" | sed -n 's/.*ansible_host=\([^ ]*\).*/\1/p')
user=$(printf '%s\n' "$line" | sed -n 's/.*ansible_user=\([^ ]*\).*/\1/p')
port=$(printf '%s\n' "$line" | sed -n 's/.*ansible_port=\([^ ]*\).*/\1/p')
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT INT TERM
# Packer 1.6.6's adapter offers only an ssh-rsa host key, which OpenSSH >= 8.8 refuses unless asked.
cat > "$workdir/ssh_config" <<EOF
Host *
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  HostKeyAlgorithms +ssh-rsa
  PubkeyAcceptedKeyTypes +ssh-rsa
  LogLevel ERROR
EOF
printf '[pytest]\naddopts = -p no:cacheprovider\n' > "$workdir/pytest.ini"
sudo=""
if [ "${BAKERY_SUDO:-1}" = 1 ]; then sudo="--sudo"; fi
cd "$BAKERY_ROOT"
rc=0
# shellcheck disable=SC2086 # BAKERY_TESTS is a space-separated list of test files
"$BAKERY_PYTHON" -m pytest -c "$workdir/pytest.ini" --rootdir "$BAKERY_ROOT" --import-mode=importlib -q -rf \
  --hosts="ssh://$user@$host:$port" --ssh-config="$workdir/ssh_config" --ssh-identity-file="$key" $sudo \
  --junitxml="$BAKERY_JUNIT" -o "junit_suite_name=testinfra on the build instance" $BAKERY_TESTS || rc=$?
case $rc in
  0|1) exit 0 ;;  # passed, or tests failed: the report says which, bake.py records it
  *) echo "testinfra could not run (pytest exit code $rc)" >&2; exit "$rc" ;;
esac
