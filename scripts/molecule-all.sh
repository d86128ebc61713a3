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
# As bakes do: mitogen (one interpreter per container, not several `podman exec`s per task) unless
# BAKERY_MITOGEN=0, and testinfra through one exec session per instance (bakery/verify/testinfra_plugin).
# Only the scenario's own plays (converge.yml, prepare.yml) take the strategy: molecule's create playbook waits
# on an async task that mitogen's strategy never reports done.
if plugins=$(.venv/bin/python -c 'from bakery.ansible import mitogen_env, mitogen_wanted
if mitogen_wanted(): print(mitogen_env()["ANSIBLE_STRATEGY_PLUGINS"])') && [ -n "$plugins" ]; then
  export ANSIBLE_STRATEGY_PLUGINS=$plugins BAKERY_MOLECULE_STRATEGY=mitogen_linear BAKERY_MOLECULE_CONNECTION=podman
fi
export PYTHONPATH="$PWD/bakery/verify/testinfra_plugin${PYTHONPATH:+:$PYTHONPATH}" \
  PYTEST_ADDOPTS="-p bakery_exec_session ${PYTEST_ADDOPTS:-}"
# The longest scenarios first (measured: hardening ~390 s, boot ~180 s, base ~170 s), so that the two
# slots end together instead of one running the longest alone at the end; then the rest by name.
roles=()
for role in hardening boot base; do
  [ -d "roles/$role/molecule/default" ] && roles+=("$role")
done
for dir in roles/*/molecule/default; do
  role=$(basename "$(dirname "$(dirname "$dir")")")
  [[ " ${roles[*]} " == *" $role "* ]] || roles+=("$role")
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
