"""Authorization rules, table-driven: the real Authorize step on real CSRs and identities."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from estkit.ca.authority import identity_of_user
from estkit.ca.authz import Authorize
from estkit.ca.create import ca_name, make_ca_certificate
from estkit.ca.identity import Enrollee, Identity, IdentityKind, RequestContext
from estkit.ca.policy import EnrollRequest, Grant, Operation
from estkit.ca.ports import IssueGuard, UserRecord
from estkit.ca.profile import Profile
from estkit.ca.rules import PolicyError, RateLimit, parse_rate, policy_from_mapping
from estkit.ca.signer import KeySigner
from estkit.errors import Forbidden
from estkit.protocol.csr import build_csr, load_csr
from estkit.protocol.keys import generate_key
from estkit.protocol.request import from_pkcs10

KEY = generate_key("ec:P-256")
_CA_KEY = generate_key("ec:P-256")
_CA = make_ca_certificate(ca_name("Device Manufacturer CA"), _CA_KEY.public_key(), KeySigner(_CA_KEY))


def _device_cert(subject: x509.Name) -> x509.Certificate:
    now = datetime.now(UTC)
    return KeySigner(_CA_KEY).sign_certificate(
        x509.CertificateBuilder().subject_name(subject).issuer_name(_CA.subject).public_key(KEY.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))


IDEVID = _device_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idevid"),
                                 x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN123")]))
GW = _device_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")]))
PRINTER = _device_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "printer-1")]))

BOB = {"labels": ["default"], "cn": ["{name}"], "dns": ["*.devices.example.com"], "ip": ["10.0.0.0/8"],
       "max_validity_days": 7}
RULES = [
    policy_from_mapping("idevid", {"kinds": ["bootstrap"], "issuers": ["CN=Device Manufacturer CA"],
                                   "cn": ["{serialNumber}"], "dns": ["{serialNumber}.devices.example.com"],
                                   "once": True}, selectors=True),
    policy_from_mapping("ras", {"kinds": ["ra"], "subjects": ["CN=gw-*"], "labels": ["default"], "cn": ["dev-*"],
                                "dns": ["*.devices.example.com"]}, selectors=True),
    policy_from_mapping("gateways", {"subjects": ["CN=gw-*"], "cn": ["{name}"], "rate": "3/hour"}, selectors=True),
]


def _user(name: str, policy: dict[str, Any] | None = None, one_time: bool = False) -> Identity:
    return identity_of_user(UserRecord(name, "-", datetime.now(UTC), one_time=one_time, policy=policy))


def _ident(kind: str, policy: dict[str, Any] | None = None, one_time: bool = False) -> Identity:
    if kind == "user":
        return _user("bob", policy, one_time)
    if kind == "star":  # a user whose name is a glob must not become a wildcard
        return _user("*", {"cn": ["{name}"]})
    if kind == "bootstrap":
        return Identity(IdentityKind.BOOTSTRAP, IDEVID.subject.rfc4514_string(), certificate=IDEVID)
    if kind == "ra":  # an id-kp-cmcRA certificate that the "ras" table grants
        return Identity(IdentityKind.CERT, "CN=ra-1", certificate=GW, is_ra=True, ra_eku=True, label="default")
    if kind == "ra-ungranted":  # an id-kp-cmcRA certificate no table selects
        return Identity(IdentityKind.CERT, "CN=printer-1", certificate=PRINTER, ra_eku=True, label="default")
    if kind == "cert-ungranted":  # a certificate no table selects: its own names only
        return Identity(IdentityKind.CERT, "CN=printer-1", certificate=PRINTER, label="default",
                        enrollee=Enrollee("user:bob", _user("bob", policy)))
    if kind == "cert-lost":
        return Identity(IdentityKind.CERT, "CN=printer-1", certificate=PRINTER, label="default",
                        enrollee=Enrollee("user:bob", _user("bob"), lost="is disabled"))
    return Identity(IdentityKind.CERT, GW.subject.rfc4514_string(), certificate=GW, label="default")


def _req(ident: Identity, *, cn: str | None = "bob", dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
         label: str = "default", subject: x509.Name | None = None, renew: bool = False,
         ra_label: bool = False) -> EnrollRequest:
    info = load_csr(build_csr(KEY, cn=cn, dns=dns, ips=ips, subject=subject))
    profile = Profile(label=label, ca="default", extended_key_usage=("clientAuth", "cmcRA") if ra_label else
                      ("clientAuth",))
    return EnrollRequest(operation=Operation.SIMPLEENROLL, profile=profile, request=from_pkcs10(info),
                         ctx=RequestContext(identity=ident, client_cert=ident if ident.certificate else None),
                         now=datetime.now(UTC), renew=renew)


CASES = [
    # id, identity, policy (users), request kwargs, refused rule (None: allowed)
    ("ok/user-unrestricted", "user", None, {"cn": "anything", "dns": ("bank.example",)}, None),
    ("ok/user-own-name-and-sans", "user", BOB, {"dns": ("a.devices.example.com",), "ips": ("10.1.2.3",)}, None),
    ("ok/user-dns-case-insensitive", "user", BOB, {"dns": ("A.Devices.Example.COM",)}, None),
    ("fail/user-other-cn", "user", BOB, {"cn": "mallory"}, "cn"),
    ("fail/user-dns-outside", "user", BOB, {"dns": ("evil.example.com",)}, "dns"),
    ("fail/user-dns-suffix-trick", "user", BOB, {"dns": ("devices.example.com.evil.org",)}, "dns"),
    ("fail/user-ip-outside", "user", BOB, {"ips": ("192.168.1.1",)}, "ip"),
    ("fail/user-ipv6-not-in-v4-net", "user", BOB, {"ips": ("::ffff:10.0.0.1",)}, "ip"),
    ("fail/user-label", "user", BOB, {"label": "routers"}, "labels"),
    ("fail/user-san-kind-without-rule", "user", {"cn": ["{name}"]}, {"dns": ("x.example",)}, "dns"),
    ("fail/user-empty-labels", "user", {"labels": []}, {}, "labels"),
    ("fail/user-name-glob-is-literal", "star", None, {"cn": "anyone"}, "cn"),
    ("ok/user-name-glob-literal-match", "star", None, {"cn": "*"}, None),
    ("ok/subject-rule", "user", {"subject": ["CN=bob,O=Example"]},
     {"subject": x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                            x509.NameAttribute(NameOID.COMMON_NAME, "bob")])}, None),
    ("fail/subject-rule", "user", {"subject": ["CN=bob,O=Example"]}, {}, "subject"),
    ("ok/bootstrap-derived-names", "bootstrap", None, {"cn": "SN123", "dns": ("SN123.devices.example.com",)}, None),
    ("fail/bootstrap-other-cn", "bootstrap", None, {"cn": "SN999"}, "cn"),
    ("fail/bootstrap-other-dns", "bootstrap", None, {"cn": "SN123", "dns": ("SN124.devices.example.com",)}, "dns"),
    ("ok/ra-for-another-name", "ra", None, {"cn": "dev-7", "dns": ("dev-7.devices.example.com",)}, None),
    ("fail/ra-outside-its-policy", "ra", None, {"cn": "dev-7", "dns": ("evil.example.com",)}, "dns"),
    ("fail/ra-other-label", "ra", None, {"cn": "dev-7", "label": "routers"}, "labels"),
    ("ok/cert-own-name", "cert", None, {"cn": "gw-1"}, None),
    ("fail/cert-other-name", "cert", None, {"cn": "gw-2"}, "cn"),
    ("ok/ungranted-cert-own-name", "cert-ungranted", None, {"cn": "printer-1"}, None),
    ("fail/ungranted-cert-other-name", "cert-ungranted", None, {"cn": "admin"}, "own-names"),
    ("fail/ungranted-cert-other-san", "cert-ungranted", None, {"cn": "printer-1", "dns": ("x.example",)},
     "own-names"),
    ("fail/ungranted-cert-other-label", "cert-ungranted", None, {"cn": "printer-1", "label": "routers"},
     "own-label"),
    ("ok/ungranted-cert-renews", "cert-ungranted", None, {"cn": "printer-1", "renew": True}, None),
    ("fail/ungranted-cert-renews-to-other-label", "cert-ungranted", None,
     {"cn": "printer-1", "renew": True, "label": "routers"}, "own-label"),
    ("fail/cert-bound-by-its-enrollee", "cert-ungranted", {"labels": ["routers"]}, {"cn": "printer-1"}, "labels"),
    ("fail/cert-of-disabled-enrollee", "cert-lost", None, {"cn": "printer-1"}, "enrollee"),
    ("fail/ra-ungranted-for-another-name", "ra-ungranted", None, {"cn": "dev-7"}, "own-names"),
    ("fail/ra-label-user-without-policy", "user", None, {"ra_label": True}, "ra-label"),
    ("fail/ra-label-user-policy-leaves-labels-open", "user", {"cn": ["{name}"]}, {"ra_label": True}, "ra-label"),
    ("ok/ra-label-listed", "user", {"labels": ["default"]}, {"ra_label": True}, None),
    ("fail/ra-label-cert-without-grant", "cert-ungranted", None, {"cn": "printer-1", "ra_label": True}, "ra-label"),
]


@pytest.mark.parametrize("kind,policy,kw,rule", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_authorize(kind: str, policy: dict[str, Any] | None, kw: dict[str, Any], rule: str | None) -> None:
    step = Authorize(RULES)
    req = _req(_ident(kind, policy), **kw)
    if rule is None:
        step(req)
    else:
        with pytest.raises(Forbidden) as exc:
            step(req)
        assert exc.value.status == 403 and f"rule '{rule}'" in exc.value.reason, exc.value.reason


@pytest.mark.parametrize("kind,policy,one_time,expect", [
    pytest.param("user", None, False, None, id="ok/no-policy-no-guard"),
    pytest.param("user", None, True, IssueGuard(consume_user="bob"), id="ok/one-time-consumed"),
    pytest.param("cert", None, False, IssueGuard(rate_count=3, rate_seconds=3600, policy="gateways"), id="ok/rate"),
    pytest.param("user", {"rate": "2/10m"}, True, IssueGuard(consume_user="bob", rate_count=2, rate_seconds=600,
                                                            policy="user:bob"), id="ok/one-time-and-rate"),
])
def test_guard(kind: str, policy: dict[str, Any] | None, one_time: bool, expect: IssueGuard | None) -> None:
    req = _req(_ident(kind, policy, one_time), cn="gw-1" if kind == "cert" else "bob")
    assert Authorize(RULES)(req).guard == expect


def test_ok_bootstrap_once_claim_is_the_certificate() -> None:
    guard = Authorize(RULES)(_req(_ident("bootstrap"), cn="SN123")).guard
    assert isinstance(guard, IssueGuard) and guard.claim is not None and guard.claim.startswith("cert:")


def test_ok_max_validity_is_the_tightest_cap() -> None:
    assert Authorize()(_req(_ident("user", BOB))) == Grant(("user:bob",), timedelta(days=7))
    # the cap never extends the label's validity: shape_certificate takes the shorter
    assert Authorize()(_req(_ident("user", {"max_validity_days": 10_000}))).max_validity == timedelta(days=10_000)
    # a certificate gets the tighter of its grant's and its enrollee's caps
    rules = [policy_from_mapping("p", {"kinds": ["cert"], "max_validity_days": 30}, selectors=True)]
    req = _req(_ident("cert-ungranted", {"max_validity_days": 9}), cn="printer-1")
    assert Authorize(rules)(req).max_validity == timedelta(days=9)


def test_fail_damaged_stored_policy_allows_nothing() -> None:
    with pytest.raises(Forbidden):
        Authorize()(_req(_ident("user", {"cn": 5})))


@pytest.mark.parametrize("text,expect", [
    pytest.param("10/hour", RateLimit(10, 3600), id="ok/hour"),
    pytest.param("100/day", RateLimit(100, 86400), id="ok/day"),
    pytest.param("5/10m", RateLimit(5, 600), id="ok/10m"),
    pytest.param("3 / 30s", RateLimit(3, 30), id="ok/spaces"),
    pytest.param("0/hour", None, id="fail/zero"),
    pytest.param("10/fortnight", None, id="fail/unit"),
    pytest.param("10", None, id="fail/no-period"),
    pytest.param("5/0m", None, id="fail/zero-period"),
])
def test_parse_rate(text: str, expect: RateLimit | None) -> None:
    if expect is None:
        with pytest.raises(PolicyError):
            parse_rate(text)
    else:
        assert parse_rate(text) == expect
        assert parse_rate(str(expect)) == expect


@pytest.mark.parametrize("raw,selectors,message", [
    pytest.param({"cnn": ["x"]}, False, "unknown key 'cnn'", id="fail/unknown-key"),
    pytest.param({"users": ["x"]}, False, "unknown key 'users'", id="fail/selector-in-user-policy"),
    pytest.param({"ip": ["10.0.0.0/33"]}, False, "'ip'", id="fail/bad-network"),
    pytest.param({"max_validity_days": 0}, False, "max_validity_days", id="fail/validity-zero"),
    pytest.param({"max_validity_days": True}, False, "max_validity_days", id="fail/validity-bool"),
    pytest.param({"kinds": ["robot"]}, True, "'kinds'", id="fail/kind"),
    pytest.param({"dns": [""]}, False, "'dns'", id="fail/empty-pattern"),
    pytest.param({"once": "yes"}, False, "'once'", id="fail/once-type"),
])
def test_policy_errors(raw: dict[str, Any], selectors: bool, message: str) -> None:
    with pytest.raises(PolicyError) as exc:
        policy_from_mapping("p", raw, selectors=selectors)
    assert message in str(exc.value)


# -- the config file's [policies.NAME] tables and the CLI -------------------------------------------------


def _config_with(tmp_path: Any, extra: str) -> Any:
    from support import init_server_dir

    from estkit.config import load_config
    d = init_server_dir(tmp_path / "d")
    with open(d / "config.toml", "a") as f:
        f.write(extra)
    return d, load_config


@pytest.mark.e2e  # runs `estkit init`
@pytest.mark.parametrize("extra,message", [
    pytest.param('\n[policies.p]\ncnn = ["x"]\n', "'policies.p': unknown key 'cnn'", id="fail/unknown-key"),
    pytest.param('\n[policies.p]\nlabels = ["nope"]\n', "'policies.p.labels' names unknown label 'nope'",
                 id="fail/unknown-label"),
    pytest.param('\n[policies.p]\nrate = "many"\n', "'policies.p': rate 'many'", id="fail/rate"),
    pytest.param('\n[labels.x]\ndigest_auth = ["SHA-1"]\n', "'labels.x.digest_auth': unknown 'SHA-1'",
                 id="fail/digest-algorithm"),
    pytest.param('\n[policies]\np = 3\n', "'policies.p' must be a table", id="fail/not-a-table"),
])
def test_config_policy_errors(tmp_path: Any, extra: str, message: str) -> None:
    from estkit.config import ConfigError
    d, load_config = _config_with(tmp_path, extra)
    with pytest.raises(ConfigError) as exc:
        load_config(d)
    assert message in str(exc.value)


@pytest.mark.e2e  # runs `estkit init`
def test_ok_config_policies_in_file_order(tmp_path: Any) -> None:
    d, load_config = _config_with(tmp_path, '\n[policies.first]\nusers = ["a*"]\nlabels = ["default"]\n'
                                            '\n[policies.everyone]\nrate = "5/hour"\n')
    cfg = load_config(d)
    assert [p.name for p in cfg.policies] == ["first", "everyone"]
    step = Authorize(cfg.policies)
    assert step.policy_for(Identity(IdentityKind.USER, "alice")).name == "first"  # type: ignore[union-attr]
    assert step.policy_for(Identity(IdentityKind.USER, "bob")).name == "everyone"  # type: ignore[union-attr]
    assert step.policy_for(Identity(IdentityKind.USER, "alice", policy=policy_from_mapping("user:alice", {}))).name == "user:alice"  # type: ignore[union-attr]


@pytest.mark.e2e  # runs `estkit init`
@pytest.mark.parametrize("args,message", [
    pytest.param(["--label", "nope"], "unknown label 'nope'", id="fail/unknown-label"),
    pytest.param(["--rate", "lots"], "rate 'lots'", id="fail/rate"),
    pytest.param(["--ip", "300.0.0.0/8"], "'ip'", id="fail/ip"),
    pytest.param(["--expires", "soon"], "'soon'", id="fail/expires"),
])
def test_cli_user_add_refuses_bad_rules(tmp_path: Any, args: list[str], message: str) -> None:
    from support import estkit, init_server_dir
    d = init_server_dir(tmp_path / "d")
    p = estkit("user", "add", "x", "--dir", str(d), "--generate", *args, check=False)
    assert p.returncode == 2 and message in p.stderr.decode() and b"Traceback" not in p.stderr
    assert estkit("user", "list", "--dir", str(d)).stdout == b""


@pytest.mark.e2e  # runs `estkit init`
def test_ok_cli_user_show_set_round_trip(tmp_path: Any) -> None:
    from support import estkit, init_server_dir
    d = init_server_dir(tmp_path / "d")
    estkit("user", "add", "gw", "--dir", str(d), "--password-stdin", "--cn", "{name}", "--dns", "*.x.example",
           input="secret-1\n")
    show = estkit("user", "show", "gw", "--dir", str(d)).stdout.decode()
    assert '"cn": ["{name}"]' in show and '"dns": ["*.x.example"]' in show and "secret-1" not in show
    estkit("user", "set", "gw", "--dir", str(d), "--unset", "dns", "--rate", "4/day", "--disable")
    show = estkit("user", "show", "gw", "--dir", str(d)).stdout.decode()
    assert '"rate": "4/day"' in show and "dns" not in show and "disabled:  yes" in show
    estkit("user", "set", "gw", "--dir", str(d), "--clear-policy", "--enable")
    show = estkit("user", "show", "gw", "--dir", str(d)).stdout.decode()
    assert "policy:    - (unrestricted)" in show and "disabled:  no" in show
    p = estkit("user", "set", "gw", "--dir", str(d), "--digest", check=False)
    assert p.returncode == 2 and b"needs the password" in p.stderr


@pytest.mark.e2e  # runs `estkit init`
@pytest.mark.parametrize("policy,warned", [
    pytest.param("", True, id="ok/warns-without-bootstrap-policy"),
    pytest.param('\n[policies.idevid]\nkinds = ["bootstrap"]\ncn = ["{serialNumber}"]\n', False,
                 id="ok/quiet-with-bootstrap-policy"),
])
def test_serve_warns_when_bootstrap_devices_have_no_policy(tmp_path: Any, caplog: pytest.LogCaptureFixture,
                                                           policy: str, warned: bool) -> None:
    from estkit.cli.wiring import build_authority, build_server
    d, load_config = _config_with(tmp_path, policy)
    (d / "mfg.pem").write_bytes(_CA.public_bytes(Encoding.PEM))
    text = (d / "config.toml").read_text().replace("bootstrap_trust = []", 'bootstrap_trust = ["mfg.pem"]')
    (d / "config.toml").write_text(text)
    cfg = load_config(d)
    with caplog.at_level("WARNING", logger="estkit"):
        build_server(cfg, build_authority(cfg))
    assert ("no [policies.NAME] applies to bootstrap identities" in caplog.text) is warned
