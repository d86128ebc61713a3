"""Private-key formats: what makes a marker a key, and keys that are not text.

Sources: detect-secrets' PrivateKeyDetector and gitleaks' private-key rule name the markers; both stop at the
marker. Programs such as ssh-keygen carry the markers as string constants, so a key here is a marker followed
by its body (header lines such as `Proc-Type:` or `Comment:` may come between): in a binary only such a whole
block counts; in a text file a marker alone on its line counts too (a key whose body was cut off is still a
leaked key file). PuTTY .ppk (v2, v3) needs its Private-Lines section, WireGuard its 44-character key.
Base64-wrapped PEM (Kubernetes tls.key, kubeconfig client-key-data) is decoded and counts only when the
decoded text is a private-key marker (a certificate is not). DER keys and PKCS#12 stores have no text
marker: they are recognised by their file name and their ASN.1 structure; Java keystores (JKS, JCEKS) by
their magic and a walk over their entries (a truststore of certificates only is not a finding).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

PEM_MARKER = re.compile(rb"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP |ANY )?PRIVATE KEY(?: BLOCK)?-----"
                        rb"|---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----|-----BEGIN OpenVPN Static key V1-----")
# what follows a marker in a key: optional header lines, an optional blank line, then a body line
# (indented in YAML: `ssl_key: -----BEGIN ...` followed by an indented body)
_BODY = re.compile(rb"(?:\r?\n(?:[ \t]*[A-Za-z-]+:[^\n]*\r?\n){0,20}(?:[ \t]*\r?\n)?[ \t]*"
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
                            "private-key-base64", "ansible-vault", "der-private-key", "pkcs12-keystore",
                            "java-keystore"})


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


# --- UTF-16 and UTF-32 text (Windows tools write keys that way) -----------------------------------------------------

_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
         (b"\xfe\xff", "utf-16"))


def text_codec(head: bytes) -> str | None:
    """The codec of UTF-32 text with a BOM, or of UTF-16 text with or without one; None for anything else."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    sample = head[:512]
    if len(sample) < 16:
        return None
    sample = sample[: len(sample) // 2 * 2]
    for codec in ("utf-16-le", "utf-16-be"):
        if _looks_like_text(sample, codec):
            return codec
    return None


def _looks_like_text(sample: bytes, codec: str) -> bool:
    """Mostly ASCII once decoded (so a Cyrillic line or one U+0100 still counts), printable, no NUL: ASCII or
    binary read as UTF-16 gives CJK characters, controls or NULs instead."""
    text = sample.decode(codec, errors="replace")
    printable = sum(char.isprintable() or char in "\t\r\n" for char in text)
    return "\0" not in text and printable >= 0.95 * len(text) and sum(char < "\x80" for char in text) >= len(text) / 2


# --- Java keystores (JKS, JCEKS) -----------------------------------------------------------------------------------

KEYSTORE_MAGICS = (b"\xfe\xed\xfe\xed", b"\xce\xce\xce\xce")
KEYSTORE_MAX = 4 << 20  # a store larger than this is not read: it counts as holding a key


def keystore_holds_key(data: bytes | None) -> bool:
    """A JKS/JCEKS store (magic FEEDFEED/CECECECE) holds a private or secret key entry, or cannot be read (fail
    closed); a truststore of certificates only (Debian's /etc/ssl/certs/java/cacerts) does not."""
    if data is None:
        return True
    try:
        return _walk_keystore(data)
    except struct.error:
        return True


def _walk_keystore(data: bytes) -> bool:
    version, count = struct.unpack_from(">II", data, 4)
    if version not in (1, 2):
        return True
    at = 12
    for _ in range(count):
        tag, alias = struct.unpack_from(">IH", data, at)
        if tag != 2:  # 1: private key, 3: secret key (JCEKS); anything else: not a store this reads
            return True
        at += 6 + alias + 8  # alias, then the date it was added
        if version == 2:
            at += 2 + struct.unpack_from(">H", data, at)[0]  # certificate type, "X.509"
        at += 4 + struct.unpack_from(">I", data, at)[0]
    return at + 20 != len(data)  # a SHA-1 digest ends the store


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


def _only_whitespace_after(head: bytes, end: int, size: int) -> bool:
    """The ASN.1 element ends the file, but for a trailing newline or a few blanks (an editor or `echo >>`)."""
    return end == size or (end < size <= len(head) and size - end <= 16 and not head[end:size].strip())


def der_rule(name: str, head: bytes, size: int) -> str | None:
    """der-private-key / pkcs12-keystore when a key-named file is exactly one ASN.1 SEQUENCE holding a key."""
    pkcs12, der = PKCS12_NAMES.search(name), DER_NAMES.search(name)
    outer = _der_header(head, 0) if (pkcs12 or der) else None
    if outer is None or outer[0] != 0x30 or not _only_whitespace_after(head, outer[1] + outer[2], size):
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
