"""Offline stand-ins for what ops teams take from Ansible Galaxy: a Galaxy-style role in a local git repository and a
collection tarball built by `ansible-galaxy collection build`. Nothing here touches the network, and nothing the
roles do installs a package: they render a file, notify a handler and read OS-family vars, as community roles do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

GIT_ID = ["-c", "user.email=test@bakery", "-c", "user.name=bakery tests"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *GIT_ID, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def git_role(tmp_path: Path, name: str, *, depends_on: str | None = None, namespace: str = "acme",
             greeting: str = "hello", tag: str | None = "v1.0.0") -> Path:
    """A role `namespace.name` in its own git repository at tmp_path/repos/<name> (one commit, tagged `tag`).

    It reads vars/<os_family>.yml, renders /etc/<name>.conf from a template and notifies a handler that writes
    /var/lib/<name>.reloaded; `depends_on` (e.g. "acme.base") becomes its meta/main.yml dependency.
    """
    repo = tmp_path / "repos" / name
    var = name.replace("-", "_")
    meta = {"galaxy_info": {"author": namespace, "namespace": namespace, "role_name": name,
                            "description": f"{name}: a community-style role for bakery's tests", "license": "MIT",
                            "min_ansible_version": "2.15", "platforms": [{"name": "Debian", "versions": ["bookworm"]}]},
            "dependencies": [depends_on] if depends_on else []}
    tasks = [
        {"name": "Load the OS family's settings",
         "ansible.builtin.include_vars": "{{ ansible_facts['os_family'] }}.yml"},
        {"name": f"Render {name}'s configuration", "ansible.builtin.template": {
            "src": f"{name}.conf.j2", "dest": f"{{{{ __{var}_conf_path }}}}", "mode": "0644"},
         "notify": f"{name} reloaded"},
    ]
    handlers = [{"name": f"{name} reloaded", "ansible.builtin.copy": {
        "content": "reloaded\n", "dest": f"/var/lib/{name}.reloaded", "mode": "0644"}}]
    _write(repo, {
        "meta/main.yml": yaml.safe_dump(meta, sort_keys=False),
        "defaults/main.yml": yaml.safe_dump({f"{var}_greeting": greeting}),
        "vars/Debian.yml": yaml.safe_dump({f"__{var}_conf_path": f"/etc/{name}.conf"}),
        "tasks/main.yml": yaml.safe_dump(tasks, sort_keys=False),
        "handlers/main.yml": yaml.safe_dump(handlers, sort_keys=False),
        f"templates/{name}.conf.j2": f"# managed by {namespace}.{name}\ngreeting = {{{{ {var}_greeting }}}}\n",
        "README.md": f"# {namespace}.{name}\n",
    })
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", f"{name}: first release")
    if tag:
        _git(repo, "tag", tag)
    return repo


def git_commit(repo: Path, files: dict[str, str], message: str = "change", tag: str | None = None) -> str:
    """Write files into a fixture repository and commit them (tagged `tag`); returns the new commit id."""
    _write(repo, files)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    if tag:
        _git(repo, "tag", tag)
    return _git(repo, "rev-parse", "HEAD")


def git_head(repo: Path) -> str:
    return _git(repo, "rev-parse", "HEAD")


MODULE = '''#!/usr/bin/python
"""{ns}.{name}.answer: returns the answer this version of the collection was built with."""
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={{}}, supports_check_mode=True)
    module.exit_json(changed=False, answer={answer!r})


if __name__ == "__main__":
    main()
'''


def collection_tarball(tmp_path: Path, ns: str, name: str, version: str, *, answer: str | None = None,
                       role: str = "motd") -> Path:
    """`ansible-galaxy collection build` of ns.name at `version` with one role (`role`: asks the module for its answer
    and writes it to /etc/<ns>-<name>.answer) and one module plugin (`answer`); content differs per version."""
    answer = answer if answer is not None else f"answer from {version}"
    src = tmp_path / "collections-src" / f"{ns}-{name}-{version}"
    tasks = [
        {"name": "Ask the collection's module", f"{ns}.{name}.answer": {}, "register": f"{role}_reply"},
        {"name": "Write the answer", "ansible.builtin.copy": {
            "content": f"{{{{ {role}_reply.answer }}}}\n", "dest": f"/etc/{ns}-{name}.answer", "mode": "0644"}},
    ]
    _write(src, {
        "galaxy.yml": yaml.safe_dump({"namespace": ns, "name": name, "version": version, "readme": "README.md",
                                      "authors": ["bakery tests"], "license": ["MIT"]}),
        "README.md": f"# {ns}.{name}\n",
        "meta/runtime.yml": yaml.safe_dump({"requires_ansible": ">=2.15"}),
        f"roles/{role}/tasks/main.yml": yaml.safe_dump(tasks, sort_keys=False),
        f"roles/{role}/meta/main.yml": yaml.safe_dump({"galaxy_info": {"author": ns, "description": role,
                                                                        "license": "MIT",
                                                                        "min_ansible_version": "2.15"},
                                                         "dependencies": []}),
        "plugins/modules/answer.py": MODULE.format(ns=ns, name=name, answer=answer),
    })
    out = tmp_path / "dist"
    out.mkdir(exist_ok=True)
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    subprocess.run([str(galaxy), "collection", "build", str(src), "--output-path", str(out), "--force"],
                   check=True, capture_output=True, text=True)
    return out / f"{ns}-{name}-{version}.tar.gz"
