"""What a runtime config value refers to (Contract 2 of issue 17), and the names a store may be asked for.

The names are checked here, before any store sees them: the local store is a directory, and a name with an empty,
`.` or `..` segment could lead out of it.
"""

import re
from dataclasses import dataclass

SSM_NAME = re.compile(r"/[A-Za-z0-9_.\-/]+")  # fullmatch only
SSM_MAX = 1011
SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@\-]{1,512}")  # fullmatch only
SSM_ARN = re.compile(r"arn:aws[a-z-]*:ssm:([a-z0-9-]*):([0-9]{12}):parameter(/.*)", re.DOTALL)
SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:([a-z0-9-]*):([0-9]{12}):secret:([^#]*)", re.DOTALL)


class BadReference(Exception):
    """A value that names SSM or Secrets Manager but no valid parameter or secret."""


@dataclass(frozen=True)
class Reference:
    text: str  # as written: what log lines and params.json show
    kind: str  # "ssm", "group" (an ssm path ending in /) or "secret"
    name: str  # an ssm name or path (without the trailing /), or a secret name
    field: str | None = None  # secretsmanager:name#field
    secret_id: str | None = None  # what Secrets Manager is asked for: the ARN when one was written
    region: str | None = None  # from an ARN


def segments(name):
    return name.split("/")


def checked_ssm(name, text):
    parts = segments(name[1:])
    if not SSM_NAME.fullmatch(name) or len(name) > SSM_MAX or any(p in ("", ".", "..") for p in parts):
        raise BadReference(f"{text} is not a valid SSM parameter name (/ then segments of A-Z a-z 0-9 _ . -, none "
                           f"empty, '.' or '..', at most {SSM_MAX} characters)")
    return name


def checked_secret(name, text):
    if not SECRET_NAME.fullmatch(name) or any(p in ("", ".", "..") for p in segments(name)):
        raise BadReference(f"{text} is not a valid secret name (1-512 of A-Z a-z 0-9 / _ + = . @ -, no empty, "
                           "'.' or '..' segment)")
    return name


def ssm(text, path, region=None):
    if path.endswith("/"):
        return Reference(text, "group", checked_ssm(path[:-1], text), region=region)
    return Reference(text, "ssm", checked_ssm(path, text), region=region)


def secret(text, rest, arn=None, region=None):
    name, _, field = rest.partition("#")
    checked_secret(name, text)
    if "#" in rest and not field:
        raise BadReference(f"{text} is not a valid secret reference: '#' needs a JSON key after it")
    return Reference(text, "secret", name, field if "#" in rest else None, arn or name, region)


def parse_reference(text):
    """The Reference a value makes; BadReference when it names SSM or Secrets Manager without a valid name.
    Called only for values the applier's REFERENCE matches; anything else (file:, other ARNs) stays text."""
    if text.startswith("ssm:"):
        return ssm(text, text[len("ssm:"):])
    if text.startswith("secretsmanager:"):
        return secret(text, text[len("secretsmanager:"):])
    match = SSM_ARN.fullmatch(text)
    if match:
        return ssm(text, match[3], match[1] or None)
    match = SECRET_ARN.match(text)
    if match:
        rest = text[match.end(3):]
        return secret(text, match[3] + rest, text[:match.end(3)], match[1] or None)
    raise BadReference(f"{text[:60]} is not an ssm or secretsmanager reference this image can resolve")


def member_key(key, name):
    """A group member's key: DB + /webapp/qa/db/read-only.url -> DB_READ_ONLY_URL."""
    last = name.rsplit("/", 1)[-1]
    return f"{key}_{last.upper().replace('-', '_').replace('.', '_')}"
