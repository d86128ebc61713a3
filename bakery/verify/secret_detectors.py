"""Which detector finds which token-shaped secret, and where each rule comes from.

detect-secrets (a maintained library) does the matching wherever a plugin covers the family; bakery adds a
small regex detector only where the library has none, with the regex taken from gitleaks' rule set
(config/gitleaks.toml). Its high-entropy plugins stay off: on an OS image every hash and checksum is "entropy".

| rule                  | detector (source)                                                                     |
|-----------------------|----------------------------------------------------------------------------------------|
| aws-access-key-id     | detect-secrets AWSKeyDetector (A3T?/ABIA/ACCA/AKIA/ASIA) + bakery AwsOtherKeyIds    |
|                       | (AGPA AIDA AROA AIPA ANPA ANVA ASCA: gitleaks' older aws-access-token)             |
| aws-secret-access-key | detect-secrets AWSKeyDetector (quoted, near "aws") + bakery AwsSecretAssignment        |
|                       | (SecretAccessKey / AWS_SECRET_KEY / aws_secret_access_key / s3cmd secret_key forms)  |
| github-token          | detect-secrets GitHubTokenDetector + bakery GitHubFineGrainedPat (gitleaks)           |
| gitlab-token          | detect-secrets GitLabTokenDetector                                                     |
| slack-token / -webhook| detect-secrets SlackDetector                                                           |
| jwt                   | detect-secrets JwtTokenDetector (header and payload must decode to JSON)               |
| stripe-key            | detect-secrets StripeDetector; bakery StripeKey (gitleaks stripe-access-token, 10-99)   |
| google-api-key        | bakery GoogleApiKey (gitleaks gcp-api-key)                                             |
| npm-token             | detect-secrets NpmDetector (.npmrc _authToken) + bakery NpmBareToken (gitleaks)       |
| pypi-token            | detect-secrets PypiTokenDetector                                                       |
| vault-token           | bakery VaultToken (gitleaks vault-service/batch-token; legacy s. only near "vault")   |
| sendgrid-key          | detect-secrets SendGridDetector                                                        |
| password-in-url       | detect-secrets BasicAuthDetector, config files only                                    |
| config-secret         | detect-secrets KeywordDetector (config-file grammar), config files only               |
|                       | (systemd units: each assignment of an Environment= line)                             |
| password-hash         | bakery: a crypt(3) hash as field 2 of a line in a copy of shadow/gshadow             |

Key formats (PEM, PuTTY, OpenVPN, WireGuard, base64-wrapped PEM, DER, PKCS#12) need context across lines
and files; they are in secret_content_keys.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.base import BasePlugin, RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import CONFIG_DENYLIST_REGEX_TO_GROUP, KeywordDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.stripe import StripeDetector


class AwsOtherKeyIds(RegexBasedDetector):
    secret_type = "AWS key id (IAM user, group, role, ... prefixes)"
    denylist = (re.compile(r"(?:AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ASCA)[A-Z0-9]{16}"),)


class AwsSecretAssignment(RegexBasedDetector):
    secret_type = "AWS secret access key assigned to its usual names"
    denylist = (re.compile(r"(?i)(?:aws_?secret_?(?:access_?)?key|secret_?access_?key|\bsecret_key)['\"]?\s*[:=]\s*"
                           r"['\"]?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"),)


class GitHubFineGrainedPat(RegexBasedDetector):
    secret_type = "GitHub fine-grained personal access token"
    denylist = (re.compile(r"github_pat_\w{82}"),)


class GoogleApiKey(RegexBasedDetector):
    secret_type = "Google API key"
    denylist = (re.compile(r"AIza[\w-]{35}"),)


class NpmBareToken(RegexBasedDetector):
    secret_type = "npm access token"
    denylist = (re.compile(r"npm_[A-Za-z0-9]{36}"),)


class StripeKey(RegexBasedDetector):
    """Stripe's current secret and restricted keys are longer than detect-secrets' 24 characters (gitleaks
    stripe-access-token: 10 to 99)."""

    secret_type = "Stripe secret key"
    denylist = (re.compile(r"(?:sk|rk)_(?:live|prod)_[A-Za-z0-9]{10,99}(?![A-Za-z0-9])"),)


class VaultToken(RegexBasedDetector):
    secret_type = "HashiCorp Vault token"
    denylist = (re.compile(r"hvs\.[\w-]{90,120}"), re.compile(r"hvb\.[\w-]{138,300}"),
                re.compile(r"(?i)vault\w*['\"]?\s*[:=]\s*['\"]?(s\.[A-Za-z0-9]{24})(?![A-Za-z0-9])"))


LEGACY_VAULT_TOKEN = re.compile(r"\s*(s\.[A-Za-z0-9]{24})\s*")  # the whole of a ~/.vault-token file


def spellings(*words: str) -> tuple[str, ...]:
    """The usual spellings of case-insensitive words (lower, UPPER, Capitalized): anchors are literals, fast."""
    return tuple(sorted({form for word in words for form in (word.lower(), word.upper(), word.capitalize(), word)}))


@dataclass(frozen=True)
class TokenRule:
    """One detector and its anchors: literals one of which must be on a line before the detector runs on it."""

    rule: str
    detector: BasePlugin
    anchors: tuple[str, ...]
    standalone: bool = True  # the match must not be part of a longer word (random bytes in binaries)
    classify: Callable[[str], str] | None = None  # one detector, two rules (AWS, Slack)
    confirm: Callable[[str], bool] | None = None  # a second look at what the detector found


def _aws_rule(secret: str) -> str:
    return "aws-access-key-id" if AWSKeyDetector.denylist[0].fullmatch(secret) else "aws-secret-access-key"


def _jwt_names_someone(token: str) -> bool:
    """A credential JWT carries registered claims (issuer, subject, expiry, ...); documentation's examples such as
    PyJWT's {"some": "payload"} do not."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return False
    return isinstance(claims, dict) and bool(JWT_CLAIMS & claims.keys())


JWT_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})


def _not_aws_example(secret: str) -> bool:
    """AWS documents its keys with AKIAIOSFODNN7EXAMPLE and wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY (gitleaks'
    aws-access-token allow-list: .+EXAMPLE$)."""
    return "EXAMPLE" not in secret


def _slack_rule(secret: str) -> str:
    return "slack-webhook" if secret.lower().startswith("https://") else "slack-token"


AWS_OTHER_IDS = ("AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "ASCA")
TOKEN_RULES = (
    TokenRule("aws-access-key-id", AWSKeyDetector(), ("A3T", "AKIA", "ASIA", "ABIA", "ACCA", *spellings("aws")),
              classify=_aws_rule, confirm=_not_aws_example),
    TokenRule("aws-access-key-id", AwsOtherKeyIds(), AWS_OTHER_IDS, confirm=_not_aws_example),
    TokenRule("aws-secret-access-key", AwsSecretAssignment(),
              spellings("secret_key", "secretkey", "secret_access_key", "secretAccessKey", "SecretAccessKey"),
              confirm=_not_aws_example),
    TokenRule("github-token", GitHubTokenDetector(), ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    TokenRule("github-token", GitHubFineGrainedPat(), ("github_pat_",)),
    TokenRule("gitlab-token", GitLabTokenDetector(), ("glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "glcbt-",
                                                      "glimt-", "glptt-", "glagent-", "gloas-", "GR1348941")),
    TokenRule("slack-token", SlackDetector(), (*spellings("xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxs-", "xoxr-"),
                                               "hooks.slack.com"), classify=_slack_rule),
    TokenRule("jwt", JwtTokenDetector(), ("eyJ",), standalone=False, confirm=_jwt_names_someone),
    TokenRule("stripe-key", StripeDetector(), ("sk_live_", "rk_live_")),
    TokenRule("stripe-key", StripeKey(), ("sk_live_", "rk_live_", "sk_prod_", "rk_prod_")),
    TokenRule("google-api-key", GoogleApiKey(), ("AIza",)),
    TokenRule("npm-token", NpmDetector(), ("_authToken",), standalone=False),
    TokenRule("npm-token", NpmBareToken(), ("npm_",)),
    TokenRule("pypi-token", PypiTokenDetector(), ("pypi-AgE",)),
    TokenRule("vault-token", VaultToken(), ("hvs.", "hvb.", *spellings("vault"))),
    TokenRule("sendgrid-key", SendGridDetector(), ("SG.",)),
)
KEYWORDS = KeywordDetector()
CONFIG_RULES = (
    TokenRule("password-in-url", BasicAuthDetector(), ("://",), standalone=False),
    TokenRule("config-secret", KEYWORDS,
              spellings("pass", "pwd", "secret", "contrase", "api_key", "apiKey", "auth_key", "authKey", "service_key",
                        "serviceKey", "account_key", "accountKey", "db_key", "dbKey", "database_key", "databaseKey",
                        "priv_key", "privKey", "private_key", "privateKey", "client_key", "clientKey"),
              standalone=False),
)
RULE_NAMES = frozenset({"aws-secret-access-key", "slack-webhook", "password-hash"}
                       | {r.rule for r in TOKEN_RULES + CONFIG_RULES})

# Values that name where a secret comes from, or say there is none: not a baked secret.
_REFERENCE = re.compile(r"""(?ix)^(?:
    |[*!x.#-]+                                   # masked or disabled: '*', '!', '***', 'xxx'
    |true|false|yes|no|on|off|none|null|nil|~|\d{1,4}  # a flag or a count, not a password
    |\$.*|\{\{.*|%\(.*|<.*>|@.*                      # ${VAR}, $VAR, {{ var }}, %(x)s, <placeholder>, @file
    |(?:ssm|secretsmanager|vault|env|file|aws-sm|arn:aws:secretsmanager)[:/].*  # a reference to a store
    |/.*                                            # a path to a file holding it
    )$""")


def is_reference(value: str) -> bool:
    return bool(_REFERENCE.match(value.strip().strip("'\"`").strip()))


_COMMENT = re.compile(r"^\s*(?:#|;|//|--|<!--)")


# the keyword starts a key (not `AWS::SecretsManager::Secret`); in JSON the key is a whole quoted string
_KEY_START = re.compile(r"(?i)(?:^|[\s\"'{,\[(])[\w.-]*(?:pass|pwd|secret|key|contrase)")
_JSON_KEY = re.compile(r"(?i)\"[\w.-]*(?:pass|pwd|secret|key|contrase)[\w.-]*\"\s*:\s*\"")


def _literal_value(line: str, value: str, *, keyword: bool) -> bool:
    """A keyword rule's value is a baked secret: not a reference, not prose (an unquoted value with spaces, such as
    nsswitch's `passwd: files systemd`), not in a comment (shipped configs show `# password = secret` examples)."""
    if is_reference(value) or _COMMENT.match(line):
        return False
    if keyword and not _KEY_START.search(line):
        return False
    if keyword and line.lstrip().startswith(("{", "\"")) and not _JSON_KEY.search(line):
        return False
    quoted = any(f"{quote}{value}{quote}" in line for quote in "'\"`")
    return quoted or not any(char.isspace() for char in value.strip())


def _standalone(line: str, secret: str) -> bool:
    index = line.find(secret)
    if index < 0:
        return True
    before = line[index - 1] if index else " "
    after = line[index + len(secret)] if index + len(secret) < len(line) else " "
    return not (before.isalnum() or after.isalnum())


# a run of token characters with a dot in it: the JWT detector's own regex tries every "eyJ" of a run without a
# dot up to the run's end (quadratic on "eyJeyJ..."); runs that start here are matched once (possessive, linear)
_DOTTED_RUN = re.compile(r"(?<![\w=-])[\w=-]++\.[\w.+/=-]*+")


def _found(rule: TokenRule, line: str) -> Iterator[str]:
    if rule.rule == "config-secret":
        yield from KEYWORDS.analyze_string(line, denylist_regex_to_group=CONFIG_DENYLIST_REGEX_TO_GROUP)
    elif rule.rule == "jwt":
        for run in _DOTTED_RUN.findall(line):
            if "eyJ" in run:
                yield from rule.detector.analyze_string(run)
    else:
        yield from rule.detector.analyze_string(line)


def _secrets(rule: TokenRule, line: str) -> Iterator[str]:
    """Each distinct candidate once, lazily: a line repeating one value thousands of times costs one check."""
    seen: set[str] = set()
    for secret in _found(rule, line):
        if secret not in seen:
            seen.add(secret)
            yield secret


def token_rules(line: str, *, config: bool) -> set[str]:
    """Rule names whose detector finds a secret on this line (the secrets themselves never leave this function)."""
    return set(_line_rules(line, config))


@functools.lru_cache(maxsize=256)
def _line_rules(line: str, config: bool) -> frozenset[str]:
    """Remembered for the last few distinct lines: a file repeating one line a million times (a log, or content
    made to be slow) costs the detectors once."""
    found = set()
    for rule in TOKEN_RULES + (CONFIG_RULES if config else ()):
        if not any(anchor in line for anchor in rule.anchors):
            continue
        for secret in _secrets(rule, line):
            if rule.standalone and not _standalone(line, secret):
                continue
            if rule.confirm and not rule.confirm(secret):
                continue
            if rule.rule in ("config-secret", "password-in-url") and \
                    not _literal_value(line, secret, keyword=rule.rule == "config-secret"):
                continue
            found.add(rule.classify(secret) if rule.classify else rule.rule)
            if not rule.classify:
                break  # the rule is found on this line: its other candidates change nothing
    return frozenset(found)


_ENVIRONMENT = re.compile(r"^\s*Environment\s*=(.*)$")
_ASSIGNMENT = re.compile(r"\"([^\"]*)\"|'([^']*)'|(\S+)")


def unit_lines(line: str) -> list[str]:
    """A systemd unit's `Environment=A=1 "B=two words"` sets variables: each assignment is a config line of its own
    (the keyword rule does not take a key that follows `Environment=`); any other line is itself."""
    match = _ENVIRONMENT.match(line)
    if not match:
        return [line]
    assignments = []
    for double, single, bare in _ASSIGNMENT.findall(match.group(1)):
        key, _, value = (double or single or bare).partition("=")
        assignments.append(f'{key}="{value}"' if double or single else f"{key}={value}")
    return assignments


# a crypt(3) hash as the second field of a shadow/gshadow line, locked ('!') or not
SHADOW_HASH = re.compile(rb"(?m)^[^:\s]+:!*\$(?:1|5|6|7|y|gy|2[abxy]|argon2(?:id|i|d)|sha1|md5)\$[^:\s]+:")
_SHADOW_NAME = re.compile(r"(?:^|[._-])g?shadow(?:$|[._~-])")


def is_shadow_copy(name: str) -> bool:
    """A copy or backup of /etc/shadow or /etc/gshadow (shadow.bak, shadow~, var/backups/gshadow.bak, ...);
    /etc/shadow itself and shadow- are the path rules' (usable-password)."""
    base = name.rsplit("/", 1)[-1]
    return name.lstrip("/") not in ("etc/shadow", "etc/shadow-") and _SHADOW_NAME.search(base) is not None


def anchors(*, config: bool) -> list[str]:
    """Every anchor: a line without any of them never reaches a detector."""
    return sorted({anchor for rule in TOKEN_RULES + (CONFIG_RULES if config else ()) for anchor in rule.anchors})
