"""Review 14b finding 15b: a launch template version's UserData edited by hand (gzip, not base64, not UTF-8,
off-grammar) is one line naming the version and exit 1 (state on AWS, not user input), never a traceback."""

from __future__ import annotations

import base64
import gzip

import pytest

from bakery.aws.launch_templates import user_data, user_data_text
from bakery.errors import OperationError

pytestmark = pytest.mark.unit

VERSION = "launch template lt-0abc version 7"


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.mark.parametrize("raw, says", [
    (encoded(gzip.compress(b'A="1"\n')), "is gzip-compressed"),
    (encoded(b'A="caf\xe9"\n'), "is not UTF-8 (byte 0xe9 at offset 6)"),
    ("not base64!", "is not base64"),
    ("QT0", "is not base64"),
    (encoded(b"#!/bin/bash\nyum -y update\n"), "expected KEY=VALUE"),
    (encoded(b'LD_PRELOAD="/tmp/x.so"\n'), "key 'LD_PRELOAD' is reserved"),
], ids=["gzip", "latin-1", "garbage", "bad-padding", "shell-script", "reserved-key"])
def test_a_hand_edited_user_data_is_one_line_naming_the_version(raw, says):
    with pytest.raises(OperationError) as err:
        user_data_text(raw, VERSION)
    text = str(err.value)
    assert text.startswith(f"{VERSION}: UserData") and says in text and "\n" not in text
    assert "yum" not in text and "/tmp/x.so" not in text


def test_user_data_bakery_wrote_reads_back():
    assert user_data_text(user_data('A="1"\n'), VERSION) == 'A="1"\n'
    assert user_data_text(None, VERSION) == "" and user_data_text("", VERSION) == ""
