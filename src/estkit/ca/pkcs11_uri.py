"""RFC 7512 PKCS#11 URIs naming a CA key, and where its PIN comes from.

A key is named like ``pkcs11:token=estkit;object=root-ca;type=private`` (with
``?module-path=...`` and ``pin-source=file:...`` as query attributes).  The PIN
is never part of the configuration: it comes from an environment variable
(``ESTKIT_PKCS11_PIN`` unless the config or ``--pkcs11-pin-env`` names
another) or from the file a ``pin-source`` names.  A URI carrying
``pin-value`` is refused, since it would put the PIN into config.toml.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pkcs11Uri", "TokenSettings", "is_pkcs11_uri", "DEFAULT_PIN_ENV", "PinError"]

DEFAULT_PIN_ENV = "ESTKIT_PKCS11_PIN"
SCHEME = "pkcs11:"
# RFC 7512 §2.3: the path and query attributes of the grammar.  Others are an
# error here (a typo must not silently widen which key is used), except the
# vendor-specific ``x-`` ones, which are ignored.
_PATH_ATTRS = {"token", "manufacturer", "serial", "model", "library-manufacturer", "library-description",
               "library-version", "object", "type", "id", "slot-manufacturer", "slot-description", "slot-id"}
_QUERY_ATTRS = {"pin-source", "pin-value", "module-name", "module-path"}
_TYPES = {"private", "public", "cert", "secret-key", "data"}


class PinError(ValueError):
    """The PIN cannot be read (variable unset, file unreadable)."""


def is_pkcs11_uri(text: str) -> bool:
    """Whether a configured key names a token object rather than a file."""
    return text[:len(SCHEME)].lower() == SCHEME


@dataclass(frozen=True)
class TokenSettings:
    """The ``[pkcs11]`` table: the module used when a URI names none, and the PIN's variable."""

    module: str = ""
    pin_env: str = DEFAULT_PIN_ENV


@dataclass(frozen=True)
class Pkcs11Uri:
    """The attributes of an RFC 7512 URI estkit uses to find a private key."""

    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    type: str | None = None
    module_path: str | None = None
    pin_source: str | None = None

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """Parse ``pkcs11:...``; ValueError naming the problem."""
        if not is_pkcs11_uri(text):
            raise ValueError(f"{text!r} is not a PKCS#11 URI (expected pkcs11:...)")
        path, _, query = text[len(SCHEME):].partition("?")
        values: dict[str, str | bytes] = {}
        for part, known, sep in ((path, _PATH_ATTRS, ";"), (query, _QUERY_ATTRS, "&")):
            for attr in filter(None, part.split(sep)):
                name, eq, raw = attr.partition("=")
                name = name.strip().lower()
                if not eq:
                    raise ValueError(f"PKCS#11 URI attribute {name!r} has no value (RFC 7512 §2.3: name=value)")
                if name.startswith("x-"):
                    continue
                if name not in known:
                    raise ValueError(f"PKCS#11 URI: unknown attribute {name!r} (RFC 7512 §2.3)")
                if name in values:
                    raise ValueError(f"PKCS#11 URI: attribute {name!r} given twice (RFC 7512 §2.3)")
                # RFC 7512 §2.3: values are percent-encoded; id is raw bytes.
                values[name] = urllib.parse.unquote_to_bytes(raw) if name == "id" else urllib.parse.unquote(raw)
        if "pin-value" in values:
            raise ValueError("PKCS#11 URI: pin-value is refused, the PIN never goes into the configuration "
                             f"(set {DEFAULT_PIN_ENV} or use pin-source=file:...)")
        if values.get("type", "private") not in _TYPES:
            raise ValueError(f"PKCS#11 URI: unknown type {values['type']!r} (RFC 7512 §2.3)")
        if "token" not in values and "serial" not in values:
            raise ValueError("PKCS#11 URI: name the token (token=LABEL or serial=...)")
        if "object" not in values and "id" not in values:
            raise ValueError("PKCS#11 URI: name the key (object=LABEL or id=...)")
        if values.get("type", "private") != "private":
            raise ValueError("PKCS#11 URI: a CA key is a private key (type=private)")

        def s(name: str) -> str | None:
            v = values.get(name)
            return v if isinstance(v, str) else None
        ident = values.get("id")
        return cls(token=s("token"), object=s("object"), id=ident if isinstance(ident, bytes) else None,
                   serial=s("serial"), manufacturer=s("manufacturer"), model=s("model"), type=s("type"),
                   module_path=s("module-path"), pin_source=s("pin-source"))

    def __str__(self) -> str:
        """The URI (RFC 7512 form), for messages and the config file."""
        q = urllib.parse.quote
        path = [f"{n}={q(v, safe='')}" for n, v in (("token", self.token), ("serial", self.serial),
                                                     ("manufacturer", self.manufacturer), ("model", self.model),
                                                     ("object", self.object)) if v is not None]
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02X}" for b in self.id))
        if self.type:
            path.append(f"type={self.type}")
        query = [f"{n}={q(v, safe='/:')}" for n, v in (("module-path", self.module_path),
                                                        ("pin-source", self.pin_source)) if v]
        return SCHEME + ";".join(path) + ("?" + "&".join(query) if query else "")

    def module(self, settings: TokenSettings) -> str:
        """The PKCS#11 module: the URI's module-path, else ``[pkcs11] module``."""
        module = self.module_path or settings.module
        if not module:
            raise ValueError(f"{self}: no PKCS#11 module (set [pkcs11] module, --pkcs11-module or "
                             "module-path= in the URI)")
        return module

    def pin(self, settings: TokenSettings) -> str:
        """The user PIN, read now (never kept in the configuration): ``pin-source`` names
        a file (RFC 7512 §2.3), else the environment variable ``settings.pin_env``."""
        if self.pin_source:
            src = self.pin_source
            if src.startswith("file:"):
                src = urllib.parse.unquote(urllib.parse.urlsplit(src).path)
            try:
                return Path(src).read_text().strip("\r\n")
            except OSError as exc:
                raise PinError(f"{self}: cannot read the PIN from {src}: {exc.strerror or exc}") from None
        value = os.environ.get(settings.pin_env)
        if value is None:
            raise PinError(f"{self}: the token PIN is not set (environment variable {settings.pin_env})")
        return value
