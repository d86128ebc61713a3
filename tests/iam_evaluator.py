"""An IAM identity-policy evaluator for tests: would AWS allow this call under these policies?

No maintained Python library evaluates identity policies with conditions (moto only checks
StringEquals in trust policies; parliament, policy_sentry and cloudsplaining lint or generate).
This one follows the IAM User Guide pages named in its comments and raises wherever it cannot
decide as AWS would (policy variables, unknown operators, Principal, a list-valued key without
ForAllValues/ForAnyValue): a silent wrong "allow" would let a replay test pass that AWS fails.
Only one principal's identity policies are evaluated (no SCPs, boundaries, session or resource
policies), so "Policy evaluation logic" reduces to explicit Deny > Allow > implicit deny.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

Decision = Literal["allow", "explicit_deny", "implicit_deny"]
ContextValue = str | list[str] | bool | int

STATEMENT_FIELDS = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}
SET_QUALIFIERS = ("ForAllValues:", "ForAnyValue:")


class PolicyError(ValueError):
    """A policy or a request context this evaluator cannot decide the way AWS would."""


def evaluate(policies: list[dict], action: str, resource: str, context: dict[str, ContextValue]) -> Decision:
    """The decision AWS makes for `action` on `resource` given these identity policies and request context."""
    effects = {effect for effect, _ in matching_statements(policies, action, resource, context)}
    if "Deny" in effects:
        return "explicit_deny"
    return "allow" if "Allow" in effects else "implicit_deny"


def matching_statements(
    policies: list[dict], action: str, resource: str, context: dict[str, ContextValue]
) -> list[tuple[str, str]]:
    """(Effect, Sid or "#<policy>.<statement>") of every statement that applies, for failure messages.

    Every statement is checked (not just up to the first Deny), so one this evaluator cannot decide
    raises even when another already denies.
    """
    if ":" not in action or "${" in action:
        raise PolicyError(f"request action {action!r} must be 'service:Action'")
    values = _context(context)
    hits = []
    for p, policy in enumerate(policies):
        for s, statement in enumerate(_statements(policy)):
            if _applies(statement, action, resource, values):
                hits.append((statement["Effect"], statement.get("Sid", f"#{p}.{s}")))
    return hits


# --- policy structure -------------------------------------------------------------------------


def _statements(policy: dict) -> list[dict]:
    if not isinstance(policy, dict) or "Statement" not in policy:
        raise PolicyError(f"policy must be an object with a Statement: {policy!r:.200}")
    version = policy.get("Version")
    if version not in (None, "2012-10-17", "2008-10-17"):
        raise PolicyError(f"policy Version {version!r} is not one IAM knows")
    statements = policy["Statement"]
    statements = [statements] if isinstance(statements, dict) else statements
    if not isinstance(statements, list) or not statements:
        raise PolicyError("policy Statement must be an object or a non-empty list of objects")
    for statement in statements:
        _check_statement(statement)
    return statements


def _check_statement(statement: Any) -> None:
    if not isinstance(statement, dict):
        raise PolicyError(f"statement must be an object: {statement!r:.200}")
    where = f"statement {statement.get('Sid', '(no Sid)')!r}"
    unknown = set(statement) - STATEMENT_FIELDS
    if unknown & {"Principal", "NotPrincipal"}:
        raise PolicyError(f"{where}: an identity policy has no Principal/NotPrincipal")
    if unknown:
        raise PolicyError(f"{where}: unknown fields {sorted(unknown)}")
    if statement.get("Effect") not in ("Allow", "Deny"):
        raise PolicyError(f"{where}: Effect must be 'Allow' or 'Deny', not {statement.get('Effect')!r}")
    for one, other in (("Action", "NotAction"), ("Resource", "NotResource")):
        if (one in statement) == (other in statement):
            raise PolicyError(f"{where}: exactly one of {one} / {other} is required")
    if not isinstance(statement.get("Condition", {}), dict):
        raise PolicyError(f"{where}: Condition must be an object")


def _patterns(value: Any, field: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise PolicyError(f"{field} must be a string or a non-empty list of strings: {value!r}")
    for item in items:
        _refuse_variables(item, field)
    return items


def _refuse_variables(text: str, where: str) -> None:
    if "${" in text:
        raise PolicyError(f"{where}: policy variable in {text!r} is not supported by this evaluator")


def _applies(statement: dict, action: str, resource: str, context: dict[str, Any]) -> bool:
    if "Action" in statement:
        action_hit = any(_action_matches(p, action) for p in _patterns(statement["Action"], "Action"))
    else:
        action_hit = not any(_action_matches(p, action) for p in _patterns(statement["NotAction"], "NotAction"))
    if "Resource" in statement:
        resource_hit = any(_resource_matches(p, resource) for p in _patterns(statement["Resource"], "Resource"))
    else:
        patterns = _patterns(statement["NotResource"], "NotResource")
        resource_hit = not any(_resource_matches(p, resource) for p in patterns)
    condition = statement.get("Condition", {})
    if not (action_hit and resource_hit):
        _check_condition(condition)  # a malformed condition raises even where the statement does not apply
        return False
    return _conditions_hold(condition, context)


# --- Action and Resource ----------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _glob(pattern: str, any_char: str, star: str, flags: int = 0) -> re.Pattern[str]:
    parts = [star if c == "*" else any_char if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), flags | re.DOTALL)


def _action_matches(pattern: str, action: str) -> bool:
    """Per "IAM JSON policy elements: Action": service prefix and action name are case-insensitive;
    * and ? are wildcards."""
    if pattern != "*" and ":" not in pattern:
        raise PolicyError(f"Action {pattern!r} must be '*' or 'service:action'")
    return _glob(pattern, ".", ".*", re.IGNORECASE).fullmatch(action) is not None


@lru_cache(maxsize=4096)
def _arn_regex(pattern: str) -> re.Pattern[str]:
    """Per "IAM JSON policy elements: Resource": * and ? match within a colon-separated ARN segment, except
    that a * which is the last character of a segment "can expand to match beyond the colon boundaries".
    ARN matching is case-sensitive."""
    out: list[str] = []
    for i, char in enumerate(pattern):
        if char == "*":
            last_of_segment = i + 1 == len(pattern) or pattern[i + 1] == ":"
            out.append(".*" if last_of_segment else "[^:]*")
        elif char == "?":
            out.append("[^:]")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _resource_matches(pattern: str, resource: str) -> bool:
    if pattern == "*":
        return True
    return _arn_regex(pattern).fullmatch(resource) is not None


# --- request context --------------------------------------------------------------------------


def _context(context: dict[str, ContextValue]) -> dict[str, Any]:
    """Context keys by lower-cased name: per "IAM JSON policy elements: Condition" key names are not
    case-sensitive, including the tag-key part of ResourceTag/<key> and aws:RequestTag/<key> (a tag Foo
    and a tag foo would both match, so such a context is refused). Values become str or list[str]."""
    values: dict[str, Any] = {}
    for key, value in context.items():
        lowered = key.lower()
        if lowered in values:
            raise PolicyError(f"context has keys differing only in case: {key!r}")
        values[lowered] = _context_value(key, value)
    return values


def _context_value(key: str, value: Any) -> str | list[str]:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise PolicyError(f"context key {key!r}: value {value!r} must be str, bool, int or a list of str")


# --- Condition --------------------------------------------------------------------------------


def _check_condition(condition: dict) -> list[tuple[str, str, list[str]]]:
    """The (operator, key, policy values) triples of a Condition, refusing what this evaluator cannot decide."""
    triples = []
    for operator, block in condition.items():
        _parse_operator(operator)
        if not isinstance(block, dict) or not block:
            raise PolicyError(f"Condition operator {operator!r} must map to an object of keys")
        for key, policy_values in block.items():
            _refuse_variables(key, f"Condition {operator}")
            triples.append((operator, key, _policy_values(operator, key, policy_values)))
    return triples


def _conditions_hold(condition: dict, context: dict[str, Any]) -> bool:
    """Per "Conditions with multiple context keys or values": operators are ANDed, the keys under one
    operator are ANDed, the values listed for one key are ORed."""
    results = [_key_holds(operator, key, values, context) for operator, key, values in _check_condition(condition)]
    return all(results)


def _policy_values(operator: str, key: str, raw: Any) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    values: list[str] = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, int | float | str):
            values.append(str(item))
        else:
            raise PolicyError(f"Condition {operator} {key}: value {item!r} must be a string, number or bool")
        _refuse_variables(values[-1], f"Condition {operator} {key}")
    if not values:
        raise PolicyError(f"Condition {operator} {key}: no values")
    return values


def _key_holds(operator: str, key: str, policy_values: list[str], context: dict[str, Any]) -> bool:
    qualifier, base, if_exists = _parse_operator(operator)
    value: Any = context.get(key.lower())
    # An empty list is taken as an absent key (a request with no tags has no aws:TagKeys). For set operators
    # this is what "Single-valued vs. multivalued context keys" says of an empty set; for Null and IfExists it
    # is this evaluator's convention, so the replay test can pass [] for "no tags".
    present = value is not None and value != []
    if base == "Null":
        return _null_holds(operator, present, policy_values)
    match, negated = _OPERATORS[base]
    if not present:
        # "IAM JSON policy elements: Condition operators" (Important box): a key missing from the
        # request context makes the condition false, except that an operator requiring the key NOT to
        # match (StringNotLike, ArnNotLike, ...) is then true; ...IfExists is true when the key is missing.
        # "Single-valued vs. multivalued context keys": ForAllValues is true when the key is missing,
        # ForAnyValue is false.
        if if_exists:
            return True
        if qualifier == "ForAllValues:":
            return True
        if qualifier == "ForAnyValue:":
            return False
        return negated
    if qualifier is None:
        if isinstance(value, list):
            # "Single-valued vs. multivalued context keys": multivalued keys "require a condition set
            # operator"; AWS documents no result without one, so refuse rather than guess.
            raise PolicyError(
                f"Condition {operator} {key}: the request has a list of values for this key; "
                "use ForAllValues:/ForAnyValue: (AWS does not define the result without one)"
            )
        return _one_value_holds(match, negated, policy_values, value)
    request_values = value if isinstance(value, list) else [value]
    holds = [_one_value_holds(match, negated, policy_values, v) for v in request_values]
    # ForAllValues: every request value matches (true for an empty set); ForAnyValue: at least one does.
    return all(holds) if qualifier == "ForAllValues:" else any(holds)


def _one_value_holds(match: Callable[[str, str], bool], negated: bool, policy_values: list[str], value: str) -> bool:
    """Policy values are ORed; a negated operator holds when the value matches none of them
    ("Conditions with multiple context keys or values")."""
    hit = any(match(p, value) for p in policy_values)
    return not hit if negated else hit


def _parse_operator(operator: str) -> tuple[str | None, str, bool]:
    qualifier = next((q for q in SET_QUALIFIERS if operator.startswith(q)), None)
    base = operator[len(qualifier) :] if qualifier else operator
    if_exists = base.endswith("IfExists")
    if if_exists:
        base = base[: -len("IfExists")]
    if base not in _OPERATORS and base != "Null":
        raise NotImplementedError(f"condition operator {operator!r} is not supported by this evaluator")
    if base == "Null" and (qualifier or if_exists):
        raise PolicyError(f"condition operator {operator!r}: Null takes no set qualifier or IfExists")
    return qualifier, base, if_exists


def _null_holds(operator: str, present: bool, policy_values: list[str]) -> bool:
    """Per "IAM JSON policy elements: Condition operators" (Null): "true" holds when the key is absent
    (or its value set is empty), "false" when it is present."""
    wanted = []
    for value in policy_values:
        if value.lower() not in ("true", "false"):
            raise PolicyError(f"Condition {operator}: value {value!r} must be true or false")
        wanted.append(value.lower() == "true")
    return any(want_absent != present for want_absent in wanted)


# --- operator implementations (positive forms; the Not forms negate them) ---------------------


def _string_like(pattern: str, value: str) -> bool:
    return _glob(pattern, ".", ".*").fullmatch(value) is not None


def _arn_like(pattern: str, value: str) -> bool:
    """ArnEquals/ArnLike: "Each of the six colon-delimited components of the ARN is checked separately
    and each can include multi-character match wildcards (*) or single-character match wildcards (?)"."""
    pattern_parts, value_parts = pattern.split(":", 5), value.split(":", 5)
    if len(pattern_parts) != 6 or len(value_parts) != 6:
        return pattern == "*" and len(value_parts) == 6
    return all(_string_like(p, v) for p, v in zip(pattern_parts, value_parts, strict=True))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _date(text: str) -> datetime | None:
    try:
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return datetime.fromtimestamp(float(text), UTC)
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        return None


def _compared(
    parse: Callable[[str], Any], compare: Callable[[Any, Any], bool], kind: str
) -> Callable[[str, str], bool]:
    """Numeric/Date operators: a policy value that does not parse is an error, a request value that does
    not parse never matches."""

    def match(policy_value: str, value: str) -> bool:
        wanted, actual = parse(policy_value), parse(value)
        if wanted is None:
            raise PolicyError(f"{kind} condition value {policy_value!r} does not parse")
        return actual is not None and compare(actual, wanted)

    return match


def _bool(policy_value: str, value: str) -> bool:
    if policy_value.lower() not in ("true", "false"):
        raise PolicyError(f"Bool condition value {policy_value!r} must be true or false")
    return policy_value.lower() == value.lower()


def _ip(policy_value: str, value: str) -> bool:
    try:
        network = ipaddress.ip_network(policy_value, strict=False)
    except ValueError:
        raise PolicyError(f"IP address condition value {policy_value!r} is not an address or CIDR range") from None
    try:
        return ipaddress.ip_address(value) in network
    except ValueError:
        return False


def _operators() -> dict[str, tuple[Callable[[str, str], bool], bool]]:
    equals: Callable[[str, str], bool] = lambda p, v: p == v  # noqa: E731
    ignore_case: Callable[[str, str], bool] = lambda p, v: p.casefold() == v.casefold()  # noqa: E731
    table: dict[str, tuple[Callable[[str, str], bool], bool]] = {
        "StringEquals": (equals, False),
        "StringNotEquals": (equals, True),
        "StringEqualsIgnoreCase": (ignore_case, False),
        "StringNotEqualsIgnoreCase": (ignore_case, True),
        "StringLike": (_string_like, False),
        "StringNotLike": (_string_like, True),
        "ArnEquals": (_arn_like, False),
        "ArnLike": (_arn_like, False),
        "ArnNotEquals": (_arn_like, True),
        "ArnNotLike": (_arn_like, True),
        "Bool": (_bool, False),
        "IpAddress": (_ip, False),
        "NotIpAddress": (_ip, True),
    }
    comparisons: Iterable[tuple[str, Callable[[Any, Any], bool], bool]] = (
        ("Equals", lambda a, w: a == w, False),
        ("NotEquals", lambda a, w: a == w, True),
        ("LessThan", lambda a, w: a < w, False),
        ("LessThanEquals", lambda a, w: a <= w, False),
        ("GreaterThan", lambda a, w: a > w, False),
        ("GreaterThanEquals", lambda a, w: a >= w, False),
    )
    for suffix, compare, negated in comparisons:
        table[f"Numeric{suffix}"] = (_compared(_number, compare, "Numeric"), negated)
        table[f"Date{suffix}"] = (_compared(_date, compare, "Date (ISO 8601 or epoch seconds)"), negated)
    return table


_OPERATORS = _operators()
