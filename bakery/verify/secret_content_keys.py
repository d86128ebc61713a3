"""Private-key formats: what makes a marker a key, and keys that are not text.

Sources: detect-secrets' PrivateKeyDetector and gitleaks' private-key rule name the markers; both stop at the
marker. Programs such as ssh-keygen carry the markers as string constants, so a key here is a marker followed
by its body (header lines such as `Proc-Type:` or `Comment:` may come between): in a binary only such a whole
block counts; in a text file a marker alone on its line counts too (a key whose body was cut off is still a
leaked key file). PuTTY .ppk (v2, v3) needs its Private-Lines section, WireGuard its 44-character key.
Base64-wrapped PEM (Kubernetes tls.key, kubeconfig client-key-data) is decoded and counts only when the
decoded text is a private-key marker (a certificate is not). DER keys and PKCS#12 stores have no text
marker: they are recognised by their file name and their ASN.1 structure.
"""

from __future__ import annotations

import base64
import binascii
import re

PEM_MARKER = re.compile(rb"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP |ANY )?PRIVATE KEY(?: BLOCK)?-----"
                        rb"|---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----|-----BEGIN OpenVPN Static key V1-----")
# what follows a marker in a key: optional header lines, an optional blank line, then a body line
_BODY = re.compile(rb"(?:\r?\n(?:[A-Za-z-]+:[^\n]*\r?\n){0,20}(?:\r?\n)?"
                   rb"|(?:\\r)?\\n(?:[A-Za-z-]+:(?:[^\\]|\\[^n])*\\n){0,20}(?:(?:\\r)?\\n)?)[A-Za-z0-9+/=]{20,}")
PUTTY = re.compile(rb"(?m)^PuTTY-User-Key-File-[23]: ")
_PUTTY_PRIVATE = re.compile(rb"\nPrivate-Lines: *[0-9]+\r?\n")
WIREGUARD = re.compile(rb"(?m)^[ \t]*PrivateKey[ \t]*=[ \t]*[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=[ \t]*\r?$")
BASE64_PEM = re.compile(rb"LS0tLS1CRUdJTi[A-Za-z0-9+/]{46,}")  # base64 of "-----BEGIN" and a bit more
ANSIBLE_VAULT = re.compile(rb"(?m)^[ \t]*\$ANSIBLE_VAULT;[0-9]+\.[0-9]+;AES256")
LOOKAHEAD = 16 << 10  # how far a key's body or PuTTY's Private-Lines may be from its marker

KEY_ANCHORS = (b"-----BEGIN", b"---- BEGIN SSH2", b"PuTTY-User-Key-File-", b"PrivateKey", b"LS0tLS1CRUdJTi",
               b"$ANSIBLE_VAULT;")
KEY_RULE_NAMES = frozenset({"private-key", "openvpn-static-key", "putty-private-key", "wireguard-private-key",
                            "private-key-base64", "ansible-vault", "der-private-key", "pkcs12-keystore"})


def marker_rule(marker: bytes) -> str:
    return "openvpn-static-key" if b"OpenVPN" in marker else "private-key"


def block_follows(buf: bytes, end: int) -> bool:
    """A key's body follows the marker that ends at `end` (within LOOKAHEAD bytes)."""
    return _BODY.match(buf[end:end + LOOKAHEAD]) is not None


def putty_private_follows(buf: bytes, end: int) -> bool:
    return _PUTTY_PRIVATE.search(buf, end, end + LOOKAHEAD) is not None


def base64_pem_is_key(match: bytes) -> bool:
    """Decode the start of a base64 blob and confirm it is a private-key marker (not a certificate)."""
    head = match[:80]
    try:
        text = base64.b64decode(head[: len(head) // 4 * 4], validate=True)
    except (binascii.Error, ValueError):
        return False
    return PEM_MARKER.match(text) is not None


# --- UTF-16 text (Windows tools write keys that way) ---------------------------------------------------------------

def utf16_codec(head: bytes) -> str | None:
    """'utf-16' (with a BOM), 'utf-16-le' or 'utf-16-be' when the file is UTF-16 text, else None."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    sample = head[:512]
    if len(sample) < 16:
        return None
    sample = sample[: len(sample) // 2 * 2]
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0:
        return "utf-16-le"
    if even.count(0) >= 0.9 * len(even) and odd.count(0) == 0:
        return "utf-16-be"
    return None


# --- DER keys and PKCS#12 ------------------------------------------------------------------------------------------

DER_NAMES = re.compile(r"(?i)\.(?:key|der|pk8|p8|pkcs8)$")
PKCS12_NAMES = re.compile(r"(?i)\.(?:p12|pfx|pkcs12)$")


def _der_header(data: bytes, at: int) -> tuple[int, int, int] | None:
    """(tag, offset of contents, length of contents) of the DER element at `at`, or None."""
    if at + 2 > len(data):
        return None
    tag, first = data[at], data[at + 1]
    if first < 0x80:
        return tag, at + 2, first
    count = first & 0x7F
    if not 1 <= count <= 4 or at + 2 + count > len(data):
        return None
    return tag, at + 2 + count, int.from_bytes(data[at + 2: at + 2 + count], "big")


def der_rule(name: str, head: bytes, size: int) -> str | None:
    """der-private-key / pkcs12-keystore when a key-named file is exactly one ASN.1 SEQUENCE holding a key."""
    pkcs12, der = PKCS12_NAMES.search(name), DER_NAMES.search(name)
    outer = _der_header(head, 0) if (pkcs12 or der) else None
    if outer is None or outer[0] != 0x30 or outer[1] + outer[2] != size:
        return None
    start = outer[1]
    inner = head[start:start + 3]
    if pkcs12:
        return "pkcs12-keystore" if inner == b"\x02\x01\x03" else None
    if inner in (b"\x02\x01\x00", b"\x02\x01\x01"):  # PKCS#1 RSA/DSA, SEC1 EC, PKCS#8 (versions 0, 1)
        return "der-private-key"
    algorithm = _der_header(head, start)  # EncryptedPrivateKeyInfo: SEQUENCE {AlgorithmIdentifier, OCTET STRING}
    if algorithm is None or algorithm[0] != 0x30 or head[algorithm[1]:algorithm[1] + 1] != b"\x06":
        return None
    after = algorithm[1] + algorithm[2]
    return "der-private-key" if head[after:after + 1] == b"\x04" else None  # a public key has a BIT STRING here
