"""Where references resolve: the local store bakery delivers read-only (Contract 3 of issue 17) or, in aws.py,
SSM and Secrets Manager. Each store answers (value, version) for a parameter or a secret and a list of
(name, value, version) for a group, or raises Missing or Unusable with a reason that never holds a value."""

import json
import os
import re

MEMBER_FILE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*\.json")  # fullmatch; a dotfile is a write in progress
MAX_RECORD = 1024 * 1024


class Missing(Exception):
    """The parameter, secret or field does not exist."""


class Unusable(Exception):
    """The store cannot be asked, or answered something that is not a value."""


class LocalStore:
    """.bakery/params/<env>/ mounted at /etc/bakery/params: ssm/<path>.json and secretsmanager/<name>.json, each
    {"name", "type", "value", "version", ...}. Nothing outside the mount is ever opened (symlinks included)."""

    def __init__(self, root):
        self.root = root

    def _path(self, *parts):
        base = os.path.realpath(self.root)
        if not os.path.isdir(base):
            raise Unusable(f"the local parameter store {self.root} is not mounted")
        path = os.path.realpath(os.path.join(base, *parts))
        if not path.startswith(base + os.sep):
            raise Unusable(f"its file in the local store leads outside {self.root}")
        return path

    def _record(self, path, name):
        try:
            with open(path, "rb") as handle:
                record = json.loads(handle.read(MAX_RECORD).decode("utf-8"))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise Missing(f"no such entry in the local parameter store {self.root}") from None
        except (UnicodeDecodeError, ValueError):
            raise Unusable(f"its file in the local store is not a JSON record ({path})") from None
        if (not isinstance(record, dict) or not isinstance(record.get("value"), str)
                or record.get("name", name) != name):
            raise Unusable(f"its file in the local store is not a parameter record for {name} ({path})")
        return record["value"], record.get("version")

    def parameter(self, ref):
        parts = ref.name[1:].split("/")
        return self._record(self._path("ssm", *parts[:-1], f"{parts[-1]}.json"), ref.name)

    def group(self, ref):
        directory = self._path("ssm", *ref.name[1:].split("/"))
        try:
            entries = sorted(e for e in os.listdir(directory) if MEMBER_FILE.fullmatch(e))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        members = []
        for entry in entries:
            path = self._path("ssm", *ref.name[1:].split("/"), entry)
            if os.path.isfile(path):
                name = f"{ref.name}/{entry[:-len('.json')]}"
                members.append((name, *self._record(path, name)))
        if not members:
            raise Missing(f"no parameter directly under {ref.name}/ in the local parameter store {self.root}")
        return members

    def secret(self, ref):
        parts = ref.name.split("/")
        return self._record(self._path("secretsmanager", *parts[:-1], f"{parts[-1]}.json"), ref.name)


def field_of(secret, field):
    """secretsmanager:name#field: that field of the JSON SecretString, as text (a number or a boolean as JSON)."""
    try:
        document = json.loads(secret)
    except ValueError:
        raise Unusable(f"the secret is not a JSON object, so it has no field {field}") from None
    if not isinstance(document, dict):
        raise Unusable(f"the secret is not a JSON object, so it has no field {field}")
    if field not in document:
        raise Missing(f"the secret has no field {field}")
    value = document[field]
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise Unusable(f"the secret's field {field} is not a string, number or boolean")
