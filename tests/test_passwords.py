"""Password hashes: OWASP's scrypt parameters, the memory one verification
takes (measured in a fresh process), and which stored hashes are upgraded."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys

import pytest

from estkit.ca.passwords import CURRENT, OWASP_EQUIVALENT, ScryptParams, hash_password, needs_rehash, verify_password


def _hash(params: ScryptParams, password: str = "pw") -> str:
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=params.n, r=params.r, p=params.p, dklen=32,
                        maxmem=params.memory + 2**20)
    return f"scrypt${params.n}${params.r}${params.p}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


_PEAK = """
import estkit.ca.passwords as p
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = hwm()
h = p.hash_password("secret")
assert p.verify_password("secret", h)
print(hwm() - before)
"""


def test_one_verification_holds_at_most_32_mib() -> None:
    """A worker's peak RSS is about 93 MB plus what its verifications at once
    hold (docs/benchmark.md: < 150 MB per worker).  With N=2^17 one took 128 MiB."""
    grown = int(subprocess.run([sys.executable, "-c", _PEAK], capture_output=True, text=True, check=True).stdout)
    assert grown < 32 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB for one hash and one verification"


def test_current_is_an_owasp_setting() -> None:
    assert CURRENT in OWASP_EQUIVALENT
    assert hash_password("x").startswith(f"scrypt${CURRENT.n}${CURRENT.r}${CURRENT.p}$")


@pytest.mark.parametrize("params", OWASP_EQUIVALENT[:2])
def test_other_owasp_settings_verify_and_are_kept(params: ScryptParams) -> None:
    """Hashes estkit made before (N=2^17, p=1) are as strong: verified, not rewritten."""
    stored = _hash(params)
    assert verify_password("pw", stored) and not verify_password("other", stored)
    assert not needs_rehash(stored)


@pytest.mark.parametrize("params", [ScryptParams(2**14, 8, 1), ScryptParams(2**15, 8, 1), ScryptParams(2**14, 4, 5)])
def test_weaker_hashes_are_upgraded(params: ScryptParams) -> None:
    stored = _hash(params)
    assert verify_password("pw", stored)
    assert needs_rehash(stored)
