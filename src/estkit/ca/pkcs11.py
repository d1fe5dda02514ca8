"""A CA key in a PKCS#11 token (an HSM, SoftHSM2): the :class:`~estkit.ca.signer.Signer` over it.

The key never leaves the token: it is generated there (or imported once,
:func:`import_key`) as sensitive and non-extractable, and every signature is
made by the token.  Certificates, CRLs and OCSP responses are assembled around
the token's signature by :mod:`estkit.ca.external`.

Processes and threads (PKCS#11 v2.40 §5.1, §6.6-6.7):
- the module is initialised once per process; a process finalises its modules
  right before it forks (``estkit serve`` starting its workers), so no module
  state crosses a fork, and each worker initialises its own (C_Initialize in
  the child, as the spec asks);
- the login belongs to the application, not to a session: each process logs in
  once per token, in a session it keeps, and signs in further sessions that
  share it, one thread per session at a time (a session runs one operation at
  a time), taken from a pool;
- python-pkcs11 calls C_Initialize without arguments, which tells the module
  that no two threads call it at once (PKCS#11 v2.40 §5.4; SoftHSM2 then turns
  its own locking off and crashes under concurrent calls).  So one lock per
  process serialises every call into a module: threads of a worker sign one
  after the other, the worker processes in parallel;
- a failure drops the sessions and the login, so the next request opens them
  anew: signing recovers by itself once the token is back.  While it cannot,
  requests get 503 (:class:`~estkit.errors.ServiceUnavailable`) and the log
  says why, naming the URI.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import (MultipleObjectsReturned, MultipleTokensReturned, NoSuchKey, NoSuchToken, PinIncorrect,
                               PinLocked, PKCS11Error, UserAlreadyLoggedIn)
from pkcs11.mechanisms import MGF
from pkcs11.util.ec import encode_ec_public_key
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509 import ocsp

from estkit.ca import external
from estkit.ca.external import Scheme
from estkit.ca.pkcs11_uri import PinError, Pkcs11Uri, TokenSettings
from estkit.errors import ServiceUnavailable

__all__ = ["Pkcs11Signer", "TokenError", "open_token", "find_public_key"]

log = logging.getLogger("estkit.pkcs11")
T = TypeVar("T")

_PKCS1 = {"sha256": Mechanism.SHA256_RSA_PKCS, "sha384": Mechanism.SHA384_RSA_PKCS,
          "sha512": Mechanism.SHA512_RSA_PKCS}
_PSS = {"sha256": (Mechanism.SHA256_RSA_PKCS_PSS, Mechanism.SHA256, MGF.SHA256),
        "sha384": (Mechanism.SHA384_RSA_PKCS_PSS, Mechanism.SHA384, MGF.SHA384),
        "sha512": (Mechanism.SHA512_RSA_PKCS_PSS, Mechanism.SHA512, MGF.SHA512)}


class TokenError(Exception):
    """The module, the token, the PIN or the key cannot be used; one line naming the URI.
    ``retry``: whether trying again (over a re-initialised module) may help; not after
    a refused PIN, which retried would lock the token."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def _why(exc: BaseException) -> str:
    """A PKCS#11 error as words (python-pkcs11 names the CKR_ code by its class)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}{': ' + text if text else ''}"


# Every call into a PKCS#11 module from this process holds this lock (see above).
CALLS = threading.RLock()


def _fresh_calls_lock() -> None:
    global CALLS
    CALLS = threading.RLock()  # a fork may copy it held by another thread of the parent


def _before_fork() -> None:
    """Finalise every module this process initialised before it forks (``estkit serve``
    forking its workers), so that no module state, session or login crosses the fork:
    the child initialises its own (PKCS#11 v2.40 §6.7.7), and neither process finalises
    state the other still uses (a network HSM client's connection, say).  Each
    initialises again on its next use."""
    global _generation
    with CALLS, _modules_lock:
        for path, lib in _libs.items():
            if _module_pid.get(path) == os.getpid() and lib.initialized:
                try:
                    lib.finalize()
                except PKCS11Error:
                    pass
        with _logins_lock:
            for key in [k for k in _logins if k[0] == os.getpid()]:
                del _logins[key]
        _generation += 1


_modules_lock = threading.Lock()
_module_pid: dict[str, int] = {}
_libs: dict[str, Any] = {}
# Bumped whenever this process finalises its modules: sessions opened before are gone.
_generation = 0
os.register_at_fork(before=_before_fork, after_in_child=_fresh_calls_lock)
_reinit_at: dict[str, float] = {}
REINIT_INTERVAL = 1.0  # seconds between two re-initialisations of a module after failures
LOG_EVERY = 10.0  # seconds between two log lines about a CA key that keeps failing to sign


def _module(path: str) -> Any:
    """The loaded module, initialised in this process (again after a fork:
    PKCS#11 v2.40 §6.7.7, a child must call C_Initialize before using it)."""
    with _modules_lock:
        try:
            old = _libs.get(path)
            if old is not None and _module_pid.get(path) != os.getpid() and old.initialized:
                try:
                    old.finalize()  # forked with the parent's state copied (no fork hook ran): not ours
                except PKCS11Error:
                    pass
            lib = pkcs11.lib(path)  # loaded once per path; C_Initialize when not initialised
        except (PKCS11Error, OSError) as exc:
            raise TokenError(f"cannot load the PKCS#11 module {path}: {_why(exc)}", retry=False) from None
        _module_pid[path] = os.getpid()
        _libs[path] = lib
        return lib


def _reinitialise(path: str) -> None:
    """C_Finalize and C_Initialize the module after a failure, at most once a second:
    modules (SoftHSM2 among them) list their slots and tokens at C_Initialize, so a
    token that was removed and is back is seen only after it.  Every session and
    login of this process on the module ends with it."""
    global _generation
    now = time.monotonic()
    with _modules_lock:
        if now - _reinit_at.get(path, -REINIT_INTERVAL) < REINIT_INTERVAL:
            return
        _reinit_at[path] = now
        _generation += 1
        with _logins_lock:
            for key in [k for k in _logins if k[1] == path]:
                del _logins[key]  # gone with C_Finalize
        try:
            lib = pkcs11.lib(path)
            try:
                lib.finalize()
            except PKCS11Error:
                pass
            lib.initialize()
        except (PKCS11Error, OSError) as exc:
            log.warning("cannot re-initialise the PKCS#11 module %s: %s", path, _why(exc))


def open_token(uri: Pkcs11Uri, settings: TokenSettings) -> Any:
    """The token the URI names (by label and/or serial)."""
    try:
        lib = _module(uri.module(settings))
    except TokenError as exc:
        raise TokenError(f"{uri}: {exc}", retry=exc.retry) from None
    try:
        return lib.get_token(token_label=uri.token,
                             token_serial=uri.serial.encode() if uri.serial is not None else None)
    except NoSuchToken:
        raise TokenError(f"{uri}: no such token in {uri.module(settings)}") from None
    except MultipleTokensReturned:
        raise TokenError(f"{uri}: several tokens match; add serial= to the URI") from None
    except PKCS11Error as exc:
        raise TokenError(f"{uri}: {_why(exc)}") from None


# The login of each token, per process: (pid, module, slot) -> the session that logged in.
_logins: dict[tuple[int, str, int], Any] = {}
# A PIN the token refused, by its hash, per (module, slot): not tried again, since every
# wrong attempt brings the token closer to locking the PIN (PKCS#11 v2.40 CKF_USER_PIN_COUNT_LOW).
_refused: dict[tuple[str, int], bytes] = {}
_logins_lock = threading.Lock()


def _login(uri: Pkcs11Uri, settings: TokenSettings, token: Any) -> None:
    """Log in to the token once in this process (PKCS#11 v2.40 §5.6: a login is the application's)."""
    key = (os.getpid(), uri.module(settings), token.slot.slot_id)
    with _logins_lock:
        if key in _logins:
            return
        try:
            pin = uri.pin(settings)
        except PinError as exc:
            raise TokenError(str(exc), retry=False) from None
        digest = hashlib.sha256(pin.encode()).digest()
        if _refused.get(key[1:]) == digest:
            raise TokenError(f"{uri}: the token refused this PIN before; not trying it again (set the right PIN "
                             "and restart)", retry=False)
        try:
            _logins[key] = token.open(user_pin=pin)
        except UserAlreadyLoggedIn:
            _logins[key] = token.open()
        except PinIncorrect:
            _refused[key[1:]] = digest
            raise TokenError(f"{uri}: the token refused the PIN (wrong PIN)", retry=False) from None
        except PinLocked:
            raise TokenError(f"{uri}: the token's user PIN is locked", retry=False) from None
        except PKCS11Error as exc:
            raise TokenError(f"{uri}: cannot log in: {_why(exc)}") from None


def _logout(uri: Pkcs11Uri, settings: TokenSettings) -> None:
    """Forget this process's login sessions of the URI's module (after a failure)."""
    with _logins_lock:
        module = uri.module(settings)
        for key in [k for k in _logins if k[0] == os.getpid() and k[1] == module]:
            session = _logins.pop(key)
            try:
                session.close()
            except PKCS11Error:
                pass  # the token is gone or the session with it


def _find(session: Any, uri: Pkcs11Uri, object_class: ObjectClass) -> Any:
    try:
        return session.get_key(object_class=object_class, label=uri.object, id=uri.id)
    except NoSuchKey:
        kind = "private key" if object_class == ObjectClass.PRIVATE_KEY else "public key"
        raise TokenError(f"{uri}: no such {kind} in the token") from None
    except MultipleObjectsReturned:
        raise TokenError(f"{uri}: several keys match; add id= to the URI") from None
    except PKCS11Error as exc:
        raise TokenError(f"{uri}: {_why(exc)}") from None


def find_public_key(uri: Pkcs11Uri, settings: TokenSettings) -> CertificateIssuerPublicKeyTypes:
    """The public key beside the URI's private key (same label/id, CKO_PUBLIC_KEY)."""
    with CALLS:
        return _find_public_key(uri, settings)


def _find_public_key(uri: Pkcs11Uri, settings: TokenSettings) -> CertificateIssuerPublicKeyTypes:
    token = open_token(uri, settings)
    _login(uri, settings, token)
    session = token.open()
    try:
        pub = _find(session, uri, ObjectClass.PUBLIC_KEY)
        if pub.key_type == KeyType.RSA:
            return rsa.RSAPublicNumbers(int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"),
                                        int.from_bytes(pub[Attribute.MODULUS], "big")).public_key()
        if pub.key_type == KeyType.EC:
            key = serialization.load_der_public_key(encode_ec_public_key(pub))
            assert isinstance(key, ec.EllipticCurvePublicKey)
            return key
        raise TokenError(f"{uri}: unsupported key type {pub.key_type!r} (EC and RSA are)")
    except PKCS11Error as exc:
        raise TokenError(f"{uri}: {_why(exc)}") from None
    finally:
        session.close()


class Pkcs11Signer:
    """Signs with a private key in a PKCS#11 token, named by an RFC 7512 URI."""

    def __init__(self, uri: Pkcs11Uri, settings: TokenSettings,
                 public_key: CertificateIssuerPublicKeyTypes | None = None, *, pss: bool = False) -> None:
        self.uri = uri
        self.settings = settings
        self._public = public_key if public_key is not None else find_public_key(uri, settings)
        self.scheme = external.scheme_for(self._public, pss=pss)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._generation = _generation
        self._free: list[tuple[Any, Any]] = []  # (session, private key object), this process's
        self._failing_since: float | None = None
        self._logged_at = 0.0

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self.uri})"

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self._public

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return self._guard(lambda: external.sign_certificate(builder, self._public, self.scheme, self._raw))

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        return self._guard(lambda: external.sign_crl(builder, self._public, self.scheme, self._raw))

    def sign_ocsp(self, builder: ocsp.OCSPResponseBuilder, responder: x509.Certificate) -> ocsp.OCSPResponse:
        # ``responder`` is this key's certificate (ocsp_signer = "ca"): the response names
        # it by this key's hash, which external.sign_ocsp computes from the public key.
        return self._guard(lambda: external.sign_ocsp(builder, self._public, self.scheme, self._raw))

    def sign_data(self, data: bytes) -> bytes:
        # CMS SignedData (RFC 5652 §5.4) here is PKCS#1 v1.5 for RSA, as with a key file.
        return self._guard(lambda: self._raw(data, Scheme(self.scheme.hash)))

    def probe(self) -> None:
        """Log in, sign and verify once: TokenError naming the URI and the reason when
        the module, token, PIN or key is unusable or the key is not the certificate's."""
        data = b"estkit PKCS#11 probe"
        sig = self._raw(data, self.scheme)
        if not external.verify_raw(self._public, self.scheme, sig, data):
            raise TokenError(f"{self.uri}: the token's key does not match the CA certificate")

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            out = fn()
        except (TokenError, external.BadSignature) as exc:
            # Logged when signing first fails, then at most every LOG_EVERY seconds while it
            # keeps failing (every request and /readyz probe would repeat it).
            now = time.monotonic()
            if self._failing_since is None or now - self._logged_at >= LOG_EVERY:
                log.error("CA key %s cannot sign: %s", self.uri, exc)
                self._logged_at = now
            if self._failing_since is None:
                self._failing_since = now
            raise ServiceUnavailable("the CA key (PKCS#11 token) is unavailable; try again later",
                                     retry_after=10) from None
        if self._failing_since is not None:
            log.warning("CA key %s signs again (after %.0f s)", self.uri, time.monotonic() - self._failing_since)
            self._failing_since = None
        return out

    def _acquire(self) -> tuple[Any, Any]:
        with self._lock:
            if (self._pid, self._generation) != (os.getpid(), _generation):
                # forked, or the module was finalised since: those sessions are gone
                self._pid, self._generation, self._free = os.getpid(), _generation, []
            if self._free:
                return self._free.pop()
        token = open_token(self.uri, self.settings)
        _login(self.uri, self.settings, token)
        try:
            session = token.open()  # shares the process's login
        except PKCS11Error as exc:
            raise TokenError(f"{self.uri}: cannot open a session: {_why(exc)}") from None
        try:
            return session, _find(session, self.uri, ObjectClass.PRIVATE_KEY)
        except TokenError:
            session.close()
            raise

    def _release(self, pair: tuple[Any, Any]) -> None:
        with self._lock:
            if (self._pid, self._generation) == (os.getpid(), _generation):
                self._free.append(pair)

    def _reset(self) -> None:
        """Forget every session and the login: the next signature opens them anew."""
        with self._lock:
            stale, self._free = self._free, []
        for session, _key in stale:
            try:
                session.close()
            except PKCS11Error:
                pass
        _logout(self.uri, self.settings)

    def _raw(self, data: bytes, scheme: Scheme) -> bytes:
        """The token's signature over ``data``, in X.509 form.  After a failure, one
        retry over a re-initialised module and fresh sessions: a session may have
        died with a token that is back."""
        for attempt in (1, 2):
            with CALLS:
                try:
                    pair = self._acquire()
                    try:
                        sig = self._sign_once(pair[1], data, scheme)
                    except PKCS11Error as exc:
                        try:
                            pair[0].close()
                        except PKCS11Error:
                            pass
                        raise TokenError(f"{self.uri}: signing failed: {_why(exc)}") from None
                except TokenError as exc:
                    self._reset()
                    if attempt == 2 or not exc.retry:
                        raise
                    _reinitialise(self.uri.module(self.settings))
                    continue
            self._release(pair)
            return sig
        raise AssertionError("unreachable")

    def _sign_once(self, key: Any, data: bytes, scheme: Scheme) -> bytes:
        name = scheme.hash.name
        if isinstance(self._public, ec.EllipticCurvePublicKey):
            digest = hashes.Hash(scheme.hash)
            digest.update(data)
            raw = key.sign(digest.finalize(), mechanism=Mechanism.ECDSA)  # r || s (PKCS#11 v2.40 §2.3.1)
            half = len(raw) // 2
            return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
        if scheme.pss:
            mech, hash_mech, mgf = _PSS[name]
            return bytes(key.sign(data, mechanism=mech, mechanism_param=(hash_mech, mgf, scheme.hash.digest_size)))
        return bytes(key.sign(data, mechanism=_PKCS1[name]))
