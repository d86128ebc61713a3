#!/bin/sh
# Run the image's testinfra suite and its roles' Molecule tests against the Packer build instance, from
# this machine over SSH with Packer's temporary key: nothing is installed on (or left behind in) the image.
# Packer's shell-local provisioner sets BAKERY_SSH_*; bake.py sets BAKERY_PYTHON, BAKERY_TESTS, BAKERY_JUNIT,
# BAKERY_ROOT and the BAKERY_VERIFY_* variables the suites read.
set -eu
if [ -z "${BAKERY_TESTS:-}" ]; then
  echo "no testinfra suite for this image (tests/images/test_<image>.py) and no role Molecule tests: nothing to run"
  exit 0
fi
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT INT TERM
umask 077
printf '%s\n' "$BAKERY_SSH_KEY" > "$workdir/key"
cat > "$workdir/ssh_config" <<EOF
Host *
  IdentityFile $workdir/key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
EOF
printf '[pytest]\naddopts = -p no:cacheprovider\n' > "$workdir/pytest.ini"
cd "$BAKERY_ROOT"
# shellcheck disable=SC2086 # BAKERY_TESTS is a space-separated list of test files
"$BAKERY_PYTHON" -m pytest -c "$workdir/pytest.ini" --rootdir "$BAKERY_ROOT" --import-mode=importlib -q \
  --hosts="ssh://$BAKERY_SSH_USER@$BAKERY_SSH_HOST:$BAKERY_SSH_PORT" --ssh-config="$workdir/ssh_config" --sudo \
  --junitxml="$BAKERY_JUNIT" -o "junit_suite_name=testinfra on the build instance" $BAKERY_TESTS
