"""KMS key references as Packer 1.6.6 accepts them, checked before a bake instead of failing inside Packer.

Packer 1.6.6 validates the AMI-level `kms_key_id` and every `region_kms_key_ids`
value with ValidateKmsKey (tag v1.6.6, builder/amazon/common/ami_config.go):
a key id must match `^[a-f0-9-]+$`, a key ARN
`^arn:aws(-us-gov)?:kms:<region>?:<12 digits>:key/[a-f0-9-]+$`, an alias
`^alias/[a-zA-Z0-9:/_-]+$` (or the same after an ARN's account). A multi-Region
key's id starts with `mrk-` ('m', 'r', 'k' are not hex), so its id and its key
ARN are both refused; an alias of it (or the alias ARN) passes. The launch volume's
`kms_key_id` (launch_block_device_mappings) is not checked by Packer, so
packer/aws.pkr.hcl hands it any key; only the keys it gives the AMI settings are
checked here: the home key and every copied region's key, once a copied region has one.
"""

from __future__ import annotations

import re

from bakery.errors import ConfigError

_KEY_ID = r"[a-f0-9-]+$"
_ALIAS = r"alias/[a-zA-Z0-9:/_-]+$"
_ARN_START = r"^arn:aws(-us-gov)?:kms:([a-z]{2}-(gov-)?[a-z]+-\d{1})?:(\d{12}):"
PACKER_PATTERNS = [re.compile(f"^{_KEY_ID}"), re.compile(f"^{_ALIAS}"),
                   re.compile(f"{_ARN_START}key/{_KEY_ID}"), re.compile(f"{_ARN_START}{_ALIAS}")]
MULTI_REGION = re.compile(r"(^|key/)mrk-")


def packer_accepts(key: str) -> bool:
    """Whether Packer 1.6.6's ValidateKmsKey takes `key` (its four patterns, as re.match applies Go's MatchString)."""
    return any(pattern.search(key) for pattern in PACKER_PATTERNS)


def field_for(settings, region: str) -> str:
    """The bakery.yml field a region's key comes from (bakery.aws.settings.AwsSettings.kms_key_for's order)."""
    if settings.region_kms_key_ids.get(region):
        return f"aws.region_kms_key_ids.{region}"
    return "aws.kms_key_id"


def check_for_packer(settings, home: str, keys: dict[str, str]) -> None:
    """Refuse, in one line naming the field, a key the Packer template would hand to Packer's key validation.

    `keys`: region -> key ('' = the region's default key), home first, as bakery.builders.ami.region_keys gives them.
    """
    copied = {region: key for region, key in keys.items() if region != home and key}
    if not copied:
        return  # the home key only goes to the launch volume, which Packer passes to EC2 unchecked
    for region, key in {home: keys.get(home, ""), **copied}.items():
        if not key or packer_accepts(key):
            continue
        setting = field_for(settings, region)
        if MULTI_REGION.search(key):
            raise ConfigError(f"bakery.yml: {setting} '{key}' is a multi-Region key, whose id and key ARN Packer "
                              "1.6.6 refuses (its key id pattern is [a-f0-9-]); give an alias of it instead "
                              f"(alias/NAME or arn:aws:kms:{region}:ACCOUNT:alias/NAME), or bake with "
                              "--builder imagebuilder")
        raise ConfigError(f"bakery.yml: {setting} '{key}' is not a KMS key id, key ARN, alias/NAME or alias ARN "
                          "as Packer 1.6.6 accepts them (aws or aws-us-gov partition); fix it or give an alias")
