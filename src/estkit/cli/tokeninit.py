"""``estkit init --pkcs11-module ... --pkcs11-token ...``: the CA keys in a token."""

from __future__ import annotations

from dataclasses import dataclass

from estkit.ca.pkcs11 import Pkcs11Signer, TokenError
from estkit.ca.pkcs11_keys import TOKEN_KEY_TYPES, generate_in_token
from estkit.ca.pkcs11_uri import Pkcs11Uri, TokenSettings
from estkit.ca.signer import Signer

__all__ = ["TokenKeys", "KEY_LABELS"]

# The object labels ``estkit init`` gives the keys it generates (CKA_LABEL).
KEY_LABELS = {"root": "estkit-root-ca", "issuing": "estkit-issuing-ca"}


@dataclass(frozen=True)
class TokenKeys:
    """Where ``init`` puts the CA keys: a token (by label) of a module, and
    optionally an existing key to use as the root CA key instead of a new one."""

    settings: TokenSettings
    token: str
    existing_label: str = ""

    def uri(self, label: str) -> Pkcs11Uri:
        """The URI of a key of this token (the module comes from ``[pkcs11] module``)."""
        return Pkcs11Uri(token=self.token, object=label, type="private")

    def check(self, key_type: str, intermediate: bool) -> None:
        """Refuse what a token cannot hold before anything is written."""
        if not self.existing_label and key_type not in TOKEN_KEY_TYPES:
            raise ValueError(f"key type {key_type} is not supported in a token (one of {', '.join(TOKEN_KEY_TYPES)})")

    def key(self, name: str, key_type: str) -> tuple[Signer, str]:
        """The signer and config value (URI) of the CA key ``name`` (root, issuing):
        the existing key for the root when one is named, else a new key made in the token."""
        try:
            if name == "root" and self.existing_label:
                uri = self.uri(self.existing_label)
                signer = Pkcs11Signer(uri, self.settings)  # its public key from the token
            else:
                uri = self.uri(KEY_LABELS.get(name, f"estkit-{name}-ca"))
                signer = Pkcs11Signer(uri, self.settings, generate_in_token(uri, self.settings, key_type))
            signer.probe()
        except TokenError as exc:
            raise ValueError(str(exc)) from None
        return signer, str(uri)
