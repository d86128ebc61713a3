#!/usr/bin/env bash
# Run every role's Molecule scenario (converge, idempotence, verify), two at a time:
# most of a scenario's time is spent waiting on podman and apt, so two overlap well
# on two cores. Each log goes to .bakery/molecule/<role>.log; a failure prints its tail.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" NO_COLOR=1 ANSIBLE_NOCOLOR=1
PARALLEL=${MOLECULE_PARALLEL:-2}
mkdir -p .bakery/molecule
# Scenarios find community roles and collections where `bake.py deps` installs them (.bakery/galaxy/):
# install (or check) them once here, never once per scenario.
if [ -f requirements.yml ]; then
  ./bake.py deps || { echo "molecule: bake.py deps failed; the scenarios need the roles in requirements.yml"; exit 1; }
fi
roles=()
for dir in roles/*/molecule/default; do
  roles+=("$(basename "$(dirname "$(dirname "$dir")")")")
done

run_one() {
  local role=$1 log=.bakery/molecule/$1.log start=$SECONDS
  if (cd "roles/$role" && molecule test) >"$log" 2>&1; then
    echo "molecule: $role passed in $((SECONDS - start)) s"
  else
    echo "molecule: $role FAILED in $((SECONDS - start)) s; last lines of $log:"
    tail -40 "$log"
    return 1
  fi
}
export -f run_one

printf '%s\n' "${roles[@]}" | xargs -P "$PARALLEL" -I{} bash -c 'run_one {}'
