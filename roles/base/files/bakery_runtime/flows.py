"""The two runs of bakery-runtime-config that resolve references: at boot (every reference, all or nothing) and
--refresh (the due refresh keys, each on its own: a failed one keeps its old value). `host` is the applier
script itself: its grammar, paths, atomic writes, IMDS and log line."""

import subprocess
import time

from bakery_runtime.references import BadReference, parse_reference
from bakery_runtime.resolve import Unresolved, open_store, resolve_key
from bakery_runtime.stores import Unusable

RELOAD = ["reload", "--no-block", "bakery-runtime-config.service"]


def default_mode(host):
    """Contract 1, for a hand-made file without BAKERY_PARAMS: the store when it is mounted, else AWS unless in
    a container (a verification must never go looking for an environment's secrets)."""
    import os

    if os.path.isdir(host.PARAMS_DIR):
        return "local"
    return "off" if host.in_container() else "aws"


def entry(ref, resolved, refresh, now):
    record = {"ref": ref, "version": resolved.version if resolved else None, "refresh": refresh,
              "checked": now[0] if resolved else None, "monotonic": now[1]}
    if resolved and resolved.members is not None:
        record["members"] = resolved.members
    return record


def boot(host, source, values, mode, refresh):
    refs = {key: value for key, value in values.items() if host.REFERENCE.match(value)}
    mode = mode or default_mode(host)
    now = (host.now_utc(), time.monotonic())
    if mode == "off":
        host.write(values)
        host.save_state({"resolved": now[0], "mode": mode, "keys": {k: entry(r, None, None, now) for k, r in
                                                                     refs.items()}})
        host.log(f"applied {len(values)} keys from {source}: {', '.join(sorted(values))}; {len(refs)} reference"
                 f"{'' if len(refs) == 1 else 's'} left as text (BAKERY_PARAMS=off): {', '.join(sorted(refs))}")
        return 0
    try:
        out = {key: value for key, value in values.items() if key not in refs}
        resolved, region = {}, None
        store = None
        for key in sorted(refs):
            try:
                ref = parse_reference(refs[key])
                store = store or open_store(host, mode)
            except (BadReference, Unusable, host.Unreadable) as error:
                raise Unresolved(key, refs[key], str(error)) from None
            resolved[key] = resolve_key(host, store, key, ref, set(out) | set(values) - {key})
            out.update(resolved[key].values)
        region = getattr(store, "region", None)
    except Unresolved as error:
        host.log(f"cannot resolve {error}; nothing written, services do not start")
        return 1
    host.write(out)
    state = {"resolved": now[0], "mode": mode, "keys": {k: entry(refs[k], r, refresh.get(k), now)
                                                        for k, r in resolved.items()}}
    if region:
        state["region"] = region
    host.save_state(state)
    every = ", ".join(f"{k} every {s} s" for k, s in sorted(refresh.items()) if k in refs)
    host.log(f"applied {len(out)} keys from {source}: {', '.join(sorted(out))}; resolved {len(refs)} "
             f"reference{'' if len(refs) == 1 else 's'} ({mode}): {', '.join(sorted(refs))}"
             + (f"; refresh: {every}" if every else "") + host.unrefreshed(values, refresh))
    return 0


def refresh(host):
    """Re-resolve the due keys; rewrite runtime.env and reload only when a value changed."""
    state = host.load_state()
    due = host.due(state, time.monotonic())  # again, under the lock
    if not due:
        return 0
    current = host.current_values()
    values, changed, failures = dict(current), set(), []
    now = (host.now_utc(), time.monotonic())
    store = None
    for key in due:
        record = state["keys"][key]
        own = set(record.get("members") or {key: None})
        try:
            try:
                ref = parse_reference(record["ref"])
                store = store or open_store(host, state["mode"], state.get("region"))
            except (BadReference, Unusable, host.Unreadable) as error:
                raise Unresolved(key, record["ref"], str(error)) from None
            resolved = resolve_key(host, store, key, ref, set(values) - own)
        except Unresolved as error:
            failures.append(f"cannot resolve {error}; keeping the old value")
            record.update(failed=now[0], monotonic=now[1])  # `checked` stays the last good one; due again in
            continue  # its interval, so the journal gets one line per interval
        for gone in own - set(resolved.values):
            values.pop(gone, None)
            changed.add(gone)
        changed.update(k for k, v in resolved.values.items() if current.get(k) != v)
        values.update(resolved.values)
        record.pop("failed", None)
        record.update(entry(record["ref"], resolved, record["refresh"], now))
    if changed:
        host.write(values)
    host.save_state(state)
    return report(host, failures, sorted(changed))


def report(host, failures, changed):
    """One line for the whole run; the services reload (ReloadPropagatedFrom=) only when a value changed."""
    parts = failures + ([f"changed: {', '.join(changed)}"] if changed else [])
    status = 1 if failures else 0
    if changed:
        reload = subprocess.run([host.SYSTEMCTL, *RELOAD], capture_output=True, check=False, timeout=60)
        if reload.returncode != 0:
            parts.append(f"{host.SYSTEMCTL} {' '.join(RELOAD)} failed (exit {reload.returncode})")
            status = 1
    if parts:
        host.log(f"refresh: {'; '.join(parts)}")
    return status
