"""Content rules of the secret scan: one test per family, planted FAKE values, line numbers, no secret in a hit.

Every fake value is built by concatenation so this file is not itself a finding.
"""

import base64
import io
import json
import shutil
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from bakery.verify.secret_content import CONTENT_RULE_NAMES, ContentHit, scan_content, scan_value

pytestmark = pytest.mark.unit

B64_BODY = "MIIEow" + "IBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0"
PEM_KINDS = ("RSA ", "DSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "")
AWS_ID = "AKIA" + "Z7XQ3VN2PLKM4JHD"
AWS_SECRET = "h7Vq2LmN9pR4sT6uW8yZ" + "0aB3cD5eF7gH9jK1mN3p"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_PAT = "github_pat_" + "11ABCDEFG0" + "x1Y2z3" * 12
GITLAB = "glpat-" + "Xy7Zq2Wv9Ut4Sr1Pq0No"
SLACK = "xoxb-" + "123456789012-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx"
SLACK_HOOK = "https://hooks.slack.com/" + "services/T0123ABCD/B0123EFGH/" + "aBcDeFgHiJkLmNoPqRsTuVwX"
STRIPE = "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
GOOGLE = "AI" + "zaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
NPM = "npm_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
PYPI = "pypi-" + "AgEIcHlwaS5vcmc" + "CJGE3NTZhZjc2LWRjNmMtNDU3Zi05NjJkLWE0OTFiYTAzZGY0MgACKlszLCJmYzQ" * 2
VAULT_HVS = "hvs." + "CAESI" + "Jd7x9Q2mZ8" * 9
VAULT_LEGACY = "s." + "Vq2LmN9pR4sT6uW8yZ0aB3cD"
SENDGRID = "SG." + "ngeVfQFYQlKU0ufo8x5d1A" + "." + "TwL2iGABf9DHoTf-09kqeF8tAmbihYzrnopKc-1s5cr"


def jwt() -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return part({"alg": "HS256", "typ": "JWT"}) + "." + part({"sub": "1234567890", "name": "x"}) + "." + \
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"


def pem(kind: str = "RSA ") -> str:
    return "-----BEGIN " + kind + "PRIVATE KEY-----\n" + B64_BODY + "\n" + B64_BODY + "\n-----END " + kind + \
        "PRIVATE KEY-----\n"


class OneWayStream(io.RawIOBase):
    """A non-seekable stream fed from chunks (like a tar member of a compressed layer): it can be read once."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buffer):
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def scan(name: str, content, *secrets: str) -> set[tuple[str, int | None]]:
    data = content.encode() if isinstance(content, str) else content
    hits = scan_content(name, io.BufferedReader(OneWayStream([data])))
    assert all(isinstance(hit, ContentHit) and hit.rule in CONTENT_RULE_NAMES for hit in hits)
    for secret in secrets:
        assert secret not in repr(hits)
    return {(hit.rule, hit.line) for hit in hits}


def test_pem_private_keys_of_every_kind():
    for kind in PEM_KINDS:
        assert scan("/etc/app/key.pem", "# key\n" + pem(kind), B64_BODY) == {("private-key", 2)}, kind
    pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\nlQOYBF" + B64_BODY + "\n"
    assert scan("/root/key.asc", pgp) == {("private-key", 1)}
    escaped = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\n' + B64_BODY + '\\n"}\n'
    assert scan("/opt/app/sa.json", escaped) == {("private-key", 1)}


def test_putty_ssh2_openvpn_and_wireguard_keys():
    for version in ("2", "3"):
        ppk = ("PuTTY-User-Key-File-" + version + ": ssh-ed25519\nEncryption: none\nComment: x\nPublic-Lines: 2\n"
               + B64_BODY + "\n" + B64_BODY + "\nPrivate-Lines: 1\n" + B64_BODY + "\nPrivate-MAC: 0a1b\n")
        assert scan("/home/u/id.ppk", "\n" + ppk) == {("putty-private-key", 2)}
    ssh2 = "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: \"x\"\nP2/56wAAAi4AAAA3" + B64_BODY + "\n"
    assert scan("/root/key.ssh2", ssh2) == {("private-key", 1)}
    ovpn = "#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n" + "e3a1" * 8 + "\n"
    assert scan("/etc/openvpn/ta.key", ovpn) == {("openvpn-static-key", 4)}
    wg_key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3f" + "Bmk="
    assert scan("/etc/wireguard/wg0.conf", "[Interface]\nAddress = 10.0.0.1/24\nPrivateKey = " + wg_key + "\n",
                wg_key) == {("wireguard-private-key", 3)}


def test_utf16_pem_with_and_without_bom():
    text = "note\r\n" + pem().replace("\n", "\r\n")
    assert scan("/etc/app/key.pem", "\ufeff".encode("utf-16-le") + text.encode("utf-16-le")) == {("private-key", 2)}
    assert scan("/etc/app/key.pem", text.encode("utf-16-be")) == {("private-key", 2)}


def test_base64_wrapped_pem_is_decoded_and_confirmed():
    wrapped = base64.b64encode(pem().encode()).decode()
    secret = ("apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\ndata:\n  tls.crt: "
              + base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n").decode() + "\n  tls.key: " + wrapped + "\n")
    assert scan("/etc/k8s/tls.yaml", secret, wrapped) == {("private-key-base64", 6)}
    kubeconfig = "users:\n- name: admin\n  user:\n    client-key-data: " + wrapped + "\n"
    assert scan("/root/.kube/config", kubeconfig) == {("private-key-base64", 4)}


def der_and_p12(tmp_path: Path) -> dict[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now).sign(key, hashes.SHA256()))
    der, fmt = serialization.Encoding.DER, serialization.PrivateFormat
    return {
        "rsa.key": key.private_bytes(der, fmt.TraditionalOpenSSL, serialization.NoEncryption()),
        "pkcs8.der": key.private_bytes(der, fmt.PKCS8, serialization.NoEncryption()),
        "enc.key": key.private_bytes(der, fmt.PKCS8, serialization.BestAvailableEncryption(b"pw")),
        "ec.key": ec.generate_private_key(ec.SECP256R1()).private_bytes(der, fmt.TraditionalOpenSSL,
                                                                        serialization.NoEncryption()),
        "store.p12": pkcs12.serialize_key_and_certificates(b"x", key, cert, None, serialization.NoEncryption()),
        "cert.der": cert.public_bytes(der),
        "pub.der": key.public_key().public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo),
    }


def test_der_keys_and_pkcs12_by_name_and_asn1(tmp_path):
    files = der_and_p12(tmp_path)
    found = {name: scan("/etc/app/" + name, data) for name, data in files.items()}
    assert found == {"rsa.key": {("der-private-key", None)}, "pkcs8.der": {("der-private-key", None)},
                     "enc.key": {("der-private-key", None)}, "ec.key": {("der-private-key", None)},
                     "store.p12": {("pkcs12-keystore", None)}, "cert.der": set(), "pub.der": set()}
    assert scan("/etc/app/data.bin", files["rsa.key"]) == set()  # not a key's name: no ASN.1 guessing


def test_aws_key_ids_with_every_prefix_and_secret_key_forms():
    for prefix in ("AKIA", "ASIA", "A3TX", "ABIA", "ACCA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "ASCA"):
        key_id = prefix + "Z7XQ3VN2PLKM4JHD"
        assert scan("/opt/app/run.sh", "#!/bin/sh\nexport ID=" + key_id + "\n", key_id) == \
            {("aws-access-key-id", 2)}, prefix
    assert scan("/opt/app/x.txt", "id " + AWS_ID + "Q\n") == set()  # part of a longer word
    forms = {
        "/opt/app/creds.json": '{\n  "Credentials": {\n    "SecretAccessKey": "' + AWS_SECRET + '"\n  }\n}\n',
        "/opt/app/.env": "\nAWS_SECRET_KEY=" + AWS_SECRET + "\n",
        "/srv/app/settings.yml": "aws:\n  aws_secret_access_key: " + AWS_SECRET + "\n",
        "/root/.s3cfg": "[default]\n\nsecret_key = " + AWS_SECRET + "\n",
        "/root/.aws/credentials": "[default]\naws_secret_access_key=" + AWS_SECRET + "\n",
    }
    lines = {"/opt/app/creds.json": 3, "/opt/app/.env": 2, "/srv/app/settings.yml": 2, "/root/.s3cfg": 3,
             "/root/.aws/credentials": 2}
    for name, text in forms.items():
        assert ("aws-secret-access-key", lines[name]) in scan(name, text, AWS_SECRET), name


def test_saas_tokens():
    planted = {"github-token": [GITHUB, GITHUB.replace("ghp_", "gho_"), GITHUB.replace("ghp_", "ghs_"), GITHUB_PAT],
               "gitlab-token": [GITLAB], "slack-token": [SLACK], "slack-webhook": [SLACK_HOOK], "jwt": [jwt()],
               "stripe-key": [STRIPE, STRIPE.replace("sk_", "rk_")], "google-api-key": [GOOGLE], "npm-token": [NPM],
               "pypi-token": [PYPI], "vault-token": [VAULT_HVS], "sendgrid-key": [SENDGRID]}
    for rule, values in planted.items():
        for value in values:
            assert scan("/opt/app/notes.txt", "first line\ntoken " + value + " end\n", value) == {(rule, 2)}, rule
    assert scan("/root/.npmrc", "//registry.npmjs.org/:_authToken=" + "0f3b" * 9 + "\n") == {("npm-token", 1)}
    assert scan("/etc/app/app.env", "VAULT_ADDR=https://v\nVAULT_TOKEN=" + VAULT_LEGACY + "\n", VAULT_LEGACY) == \
        {("vault-token", 2)}
    assert scan("/root/.vault-token", VAULT_LEGACY) == {("vault-token", 1)}
    assert scan("/opt/app/notes.txt", "ls " + VAULT_LEGACY + "\n") == set()  # no vault context


def test_passwords_in_config_files_and_urls():
    password = "Tr0ub4dor" + "-and-3"
    configs = {"/etc/app/db.ini": "[db]\nuser = app\npassword = " + password + "\n",
               "/srv/app/config.yml": "db:\n  host: x\n  password: " + password + "\n",
               "/opt/app/.env": "A=1\nDB_PASSWD=" + password + "\n",
               "/opt/app/app.properties": "x=1\n\nspring.datasource.password=" + password + "\n",
               "/etc/app/settings.json": '{\n "name": 1,\n "client_secret": "' + password + '"\n}\n'}
    lines = {"/etc/app/db.ini": 3, "/srv/app/config.yml": 3, "/opt/app/.env": 2, "/opt/app/app.properties": 3,
             "/etc/app/settings.json": 3}
    for name, text in configs.items():
        assert scan(name, text, password) == {("config-secret", lines[name])}, name
    url = "postgres://app:" + password + "@db.internal:5432/app"
    assert scan("/etc/app/app.conf", "[db]\ndsn = " + url + "\n", password) == {("password-in-url", 2)}
    assert scan("/opt/app/settings.py", "PASSWORD = '" + password + "'\nDSN = '" + url + "'\n") == set()


def test_ansible_vault_content_is_a_finding():
    vault = "$ANSIBLE" + "_VAULT;1.1;AES256\n" + "6162636465666768" * 4 + "\n"
    assert scan("/etc/app/group_vars.yml", vault) == {("ansible-vault", 1)}
    inline = "db_password: !vault |\n          " + vault.replace("\n", "\n          ")
    assert scan("/srv/app/vars.yml", inline) == {("ansible-vault", 2)}


def test_whole_stream_is_read_once_in_chunks():
    log_line = b"2024-01-01T00:00:00 app[1]: request served in 3 ms from 10.0.0.1\n"
    count = (3 << 20) // len(log_line) + 1
    chunks = [log_line * 1000] * (count // 1000) + [log_line * (count % 1000), pem().encode()]
    total = count // 1000 * 1000 + count % 1000
    hits = scan_content("/var/log/app.log", io.BufferedReader(OneWayStream(chunks)))
    assert {(h.rule, h.line) for h in hits} == {("private-key", total + 1)}


def test_long_lines_are_not_quadratic_and_tokens_on_them_are_found():
    minified = b"var a=" + b"x.y(z);" * ((6 << 20) // 7) + b'var t="' + GITHUB.encode() + b'";' + b"q;" * 1000
    start = time.monotonic()
    assert scan("/srv/www/app.min.js", minified, GITHUB) == {("github-token", 1)}
    assert time.monotonic() - start < 10


def test_binary_files_get_token_rules_but_not_keyword_rules():
    pyc = (b"\xa7\r\r\n\0\0\0\0" + b"\0\xe3" * 40 + b"\xda\x0cGITHUB_TOKEN\xfa\x28" + GITHUB.encode() + b"\xda"
           + b"\x0cAWS_KEY_ID\xfa\x14" + AWS_ID.encode() + b"\0password = " + b"hunter22" + b"\0")
    assert scan("/opt/app/__pycache__/settings.cpython-311.pyc", pyc, GITHUB, AWS_ID) == \
        {("github-token", None), ("aws-access-key-id", None)}  # a binary has no lines
    block = b"\x7fELF\0\0-----BEGIN OPENSSH PRIVATE KEY-----\n" + B64_BODY.encode() + b"\n\0"
    assert scan("/usr/lib/embedded.so", block) == {("private-key", None)}


def test_ssh_keygen_like_binaries_are_not_findings():
    marker = b"-----BEGIN OPENSSH PRIVATE KEY-----"
    synthetic = (b"\x7fELF\0\0" + marker + b"\n\0-----END OPENSSH PRIVATE KEY-----\0---- BEGIN SSH2 ENCRYPTED "
                 b"PRIVATE KEY ----\0\nComment: %s\0PuTTY-User-Key-File-%d: %s\n\0Private-Lines: %d\n")
    assert scan("/usr/bin/keytool", synthetic) == set()
    real = shutil.which("ssh-keygen")
    if real:
        assert scan("/usr/bin/ssh-keygen", Path(real).read_bytes()) == set()


def test_references_placeholders_and_public_material_are_not_findings():
    negative = {
        "/etc/app/db.ini": "[db]\npassword =\npassword = ${DB_PASSWORD}\npasswd = %(pw)s\nsecret = *\n",
        "/srv/app/config.yml": 'db:\n  password: "{{ db_password }}"\n  password2: ""\n  secret: ssm:/app/db\n'
                               "  passwd: '!'\n  password_file: /run/secrets/db\n",
        "/etc/ssh/sshd_config": "PasswordAuthentication no\nPermitEmptyPasswords no\n",
        "/etc/app/app.conf": "url = https://example.org/x?y=1\nproxy = http://user@proxy:3128\n",
        "/root/.kube/config": "clusters:\n- cluster:\n    certificate-authority-data: "
                              + base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUX\n").decode(),
        "/usr/share/doc/x/README": "Put your key in a file that starts with -----BEGIN RSA PRIVATE KEY----- please\n",
        "/opt/app/lib.py": 'PEM_HEADER = b"-----BEGIN PRIVATE KEY-----"\nvault_header = "$ANSIBLE_VAULT"\n',
        "/opt/app/conf.ini": "# password = secret\n; passwd = hunter2\n",  # commented-out examples
        "/etc/nsswitch.conf": "passwd:         files systemd\n",
        "/opt/schemas/types.json": '{\n "AWS::SecretsManager::Secret": "f6b785ff8e74d121",\n'
                                   ' "x": ["secretsmanager:ResourceTag/tag-key"]\n}\n',
        "/usr/share/doc/aws/README": "key_id = '" + "AKIAIOSFODNN7" + "EXAMPLE'\n",
        "/usr/share/doc/python3-jwt/README.rst": ">>> jwt.encode(...)\n'" + ".".join(
            base64.urlsafe_b64encode(part).decode().rstrip("=")
            for part in (b'{"alg":"HS256","typ":"JWT"}', b'{"some":"payload"}', b"signature-bytes-here!")) + "'\n",
    }
    for name, text in negative.items():
        assert scan(name, text) == set(), name


# --- review 14a ----------------------------------------------------------------------------------------------------

PASSWORD = "Hunt3rTw0" + "Secret9"


def test_scan_value_finds_tokens_and_keys_in_names_link_targets_and_xattrs():
    assert [(h.rule, h.line) for h in scan_value("opt/a/lnk", AWS_ID + ":" + AWS_SECRET)] == \
        [("aws-access-key-id", None)]
    assert [(h.rule, h.line) for h in scan_value("opt/a/f (xattr user.k)", pem())] == [("private-key", None)]
    assert [h.rule for h in scan_value("opt/a/" + GITHUB + ".txt", "opt/a/" + GITHUB + ".txt")] == ["github-token"]
    assert all(AWS_ID not in repr(hit) for hit in scan_value("x", AWS_ID))
    for harmless in ("usr/lib/x86_64-linux-gnu/libssl.so.3", "-----BEGIN RSA PRIVATE KEY-----",
                     "password = " + PASSWORD, "../../share/zoneinfo/UTC"):
        assert scan_value("x", harmless) == [], harmless  # a marker needs its body, keyword rules need a config file


def test_utf32_with_bom_and_utf16_without_bom_holding_some_non_ascii():
    text = "note\r\n" + pem().replace("\n", "\r\n")
    assert scan("/etc/app/key.pem", ("\ufeff" + text).encode("utf-32-le")) == {("private-key", 2)}
    assert scan("/etc/app/key.pem", ("\ufeff" + text).encode("utf-32-be")) == {("private-key", 2)}
    for prefix in ("Ключ сервера\r\n", "\u0100\r\n"):
        assert scan("/etc/app/key.pem", (prefix + text).encode("utf-16-le")) == {("private-key", 3)}, prefix
        assert scan("/etc/app/key.pem", (prefix + text).encode("utf-16-be")) == {("private-key", 3)}, prefix
    disguised = ("x" * 300).encode("utf-16-le") + b"\n" + pem().encode()  # looks UTF-16, the key is plain ASCII
    assert scan("/opt/app/blob", disguised) == {("private-key", None)}


def jks(magic: bytes, entries: list[tuple[int, bytes]]) -> bytes:
    def utf(text: str) -> bytes:
        return len(text).to_bytes(2, "big") + text.encode()
    cert = utf("X.509") + (300).to_bytes(4, "big") + b"\x30" * 300
    out = magic + (2).to_bytes(4, "big") + len(entries).to_bytes(4, "big")
    for tag, key in entries:
        out += tag.to_bytes(4, "big") + utf(f"alias{tag}") + (0).to_bytes(8, "big")
        out += cert if tag == 2 else len(key).to_bytes(4, "big") + key + (1).to_bytes(4, "big") + cert
    return out + b"\x11" * 20


def test_java_keystores_holding_a_private_key_and_unreadable_ones_are_findings():
    for magic in (b"\xfe\xed\xfe\xed", b"\xce\xce\xce\xce"):
        store = jks(magic, [(2, b""), (1, b"\x30\x82\x01\x00" + b"k" * 256)])
        assert scan("/opt/app/keystore.jks", store) == {("java-keystore", None)}
        assert scan("/opt/app/truststore.jks", jks(magic, [(2, b""), (2, b"")])) == set()
        assert scan("/opt/app/app.ks", magic + b"\0\0\0\x02" + b"x" * 100) == {("java-keystore", None)}
    assert scan("/opt/app/secret.jceks", jks(b"\xce\xce\xce\xce", [(3, b"\xac\xed\x00\x05")])) == \
        {("java-keystore", None)}
    cacerts = Path("/etc/ssl/certs/java/cacerts")
    if cacerts.is_file():  # Debian's truststore: certificates only
        assert scan("/etc/ssl/certs/java/cacerts", cacerts.read_bytes()) == set()


def test_a_nul_does_not_turn_off_the_line_rules_of_a_config_file():
    assert scan("/etc/app/app.conf", "#\0\npassword = " + PASSWORD + "\n", PASSWORD) == {("config-secret", 2)}
    assert scan("/etc/app/app.conf", "#\0\ndsn = postgres://app:" + PASSWORD + "@db/app\n") == \
        {("password-in-url", 2)}
    vault = "$ANSIBLE" + "_VAULT;1.1;AES256\n" + "6162636465666768" * 4 + "\n"
    assert scan("/srv/app/vars.yml", "\0\n" + vault) == {("ansible-vault", 2)}
    assert scan("/opt/app/app.ini", "\0\n-----BEGIN RSA PRIVATE KEY-----\n") == {("private-key", 2)}
    assert scan("/opt/app/app.ini", "\0\nx = " + GITHUB + "\n", GITHUB) == {("github-token", 2)}
    assert scan("/etc/app/app.conf", "\0password = " + PASSWORD + "\0\n") == set()  # that line is binary


def test_pathological_long_lines_scan_in_linear_time():
    for name, data in {"/opt/eyJ.txt": b"eyJ" * ((1 << 20) // 3),
                       "/etc/url.conf": b"x://a:b@c " * ((1 << 20) // 10)}.items():
        start = time.monotonic()
        scan(name, data)
        assert time.monotonic() - start < 3, name


def test_tokens_on_long_lines_full_of_anchors_are_found():
    long_jwt = jwt().replace(".", ".eyJzdWIiOiIx" + "QUFB" * 700 + "In0.", 1).split(".")
    long_jwt = long_jwt[0] + "." + base64.urlsafe_b64encode(
        json.dumps({"sub": "x" * 2000, "iss": "k8s"}).encode()).decode().rstrip("=") + "." + long_jwt[-1]
    for offset in range(0, 1200, 61):
        line = "aws1 " * offset + " " + GITHUB + " " + "aws1 " * 300 + "\n"
        assert scan("/srv/www/app.min.js", line, GITHUB) == {("github-token", 1)}, offset
        line = "aws1 " * offset + " t=" + long_jwt + " " + "aws1 " * 300 + "\n"
        assert scan("/srv/www/app.min.js", line) == {("jwt", 1)}, offset


def test_ordinary_leaks_systemd_environment_tfstate_der_with_newline_yaml_pem_and_shadow_copies(tmp_path):
    units = {"/etc/systemd/system/app.service": "[Service]\nEnvironment=DB_PASSWORD=" + PASSWORD + "\n",
             "/usr/lib/systemd/system/app.service": '[Service]\nEnvironment="A=1" "DB_PASSWORD=' + PASSWORD + '"\n',
             "/etc/systemd/system/app.service.d/override.conf": '[Service]\nEnvironment="API_SECRET=' + PASSWORD
                                                                 + '"\n'}
    for name, text in units.items():
        assert scan(name, text, PASSWORD) == {("config-secret", 2)}, name
    assert scan("/usr/lib/systemd/system/x.service", "[Service]\nEnvironment=PASSWORD_FILE=/run/x\n"
                "Environment=SECRET=${CREDENTIALS_DIRECTORY}/s\n") == set()
    tfstate = '{\n  "attributes": {\n    "password": "' + PASSWORD + '"\n  }\n}\n'
    assert scan("/opt/tf/terraform.tfstate", tfstate, PASSWORD) == {("config-secret", 3)}
    der = der_and_p12(tmp_path)["rsa.key"]
    for tail in (b"\n", b"\r\n", b" \n\n"):
        assert scan("/etc/app/id.key", der + tail) == {("der-private-key", None)}, tail
    body = "\n".join("  " + B64_BODY[:64] for _ in range(4))
    yaml = "ssl_key: -----BEGIN RSA PRIVATE KEY-----\n" + body + "\n  -----END RSA PRIVATE KEY-----\n"
    assert scan("/opt/app/vars.yml", yaml, B64_BODY) == {("private-key", 1)}
    hashed = "daemon:*:19000:0:99999:7:::\nroot:$6$" + "rZ2.x9/q" + "$" + "Hq7" * 28 + ":19000:0:99999:7:::\n"
    for name in ("/etc/shadow.bak", "/var/backups/shadow.bak", "/etc/shadow~", "/etc/gshadow", "/root/shadow.orig",
                 "/opt/backup/etc/shadow"):
        assert scan(name, hashed, "Hq7" * 28) == {("password-hash", 2)}, name
    for kind in ("$1$ab$", "$5$ab$", "$y$j9T$ab$", "$2b$10$", "$argon2id$v=19$m=65536,t=3,p=4$ab$", "!$6$ab$"):
        assert scan("/etc/shadow.bak", "root:" + kind + "x" * 30 + ":1::::::\n") == {("password-hash", 1)}, kind
    assert scan("/etc/shadow", hashed) == set()  # the path rules check /etc/shadow itself (usable-password)
    assert scan("/etc/shadow.bak", "root:*:19000::::::\nbob:!:1::::::\nx:!*:1::::::\n") == set()
    assert scan("/opt/app/notes.txt", hashed) == set()  # not a shadow file by its name
