"""Console account passwords: scrypt with its parameters stored, a round trip, wrong passwords, input checks."""

from __future__ import annotations

import hashlib

import pytest

from billing.console.accounts import (
    SALT_BYTES,
    AccountError,
    check_name,
    check_password,
    hash_password,
    parse_roles,
    password_matches,
)

PASSWORD = "correct horse battery"


def test_a_hash_checks_its_own_password_and_no_other() -> None:
    stored = hash_password(PASSWORD)
    assert password_matches(PASSWORD, stored)
    assert not password_matches(PASSWORD + " ", stored)
    assert not password_matches("correct horse batterY", stored)
    assert not password_matches("", stored)


def test_the_hash_keeps_the_kdf_its_parameters_and_a_random_salt() -> None:
    stored = hash_password(PASSWORD)
    assert stored["kdf"] == "scrypt" and (stored["n"], stored["r"], stored["p"]) == ("16384", "8", "1")
    assert len(bytes.fromhex(stored["salt"])) == SALT_BYTES
    expected = hashlib.scrypt(PASSWORD.encode(), salt=bytes.fromhex(stored["salt"]), n=2**14, r=8, p=1, dklen=32)
    assert stored["key"] == expected.hex()
    again = hash_password(PASSWORD)
    assert again["salt"] != stored["salt"] and again["key"] != stored["key"]
    assert PASSWORD not in str(stored)


def test_a_hash_made_with_other_parameters_still_checks() -> None:
    salt = bytes(range(16))
    key = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=2**15, r=8, p=2, maxmem=2**26, dklen=32)
    stored = {"kdf": "scrypt", "n": str(2**15), "r": "8", "p": "2", "salt": salt.hex(), "key": key.hex()}
    assert password_matches(PASSWORD, stored)
    assert not password_matches(PASSWORD, {**stored, "p": "1"})


@pytest.mark.parametrize("broken", [{}, {"kdf": "md5"}, {"salt": "zz"}, {"n": "x"}, {"key": ""}])
def test_a_damaged_stored_hash_never_matches(broken: dict[str, str]) -> None:
    stored = {**hash_password(PASSWORD), **broken}
    if not broken:
        stored = {}
    assert not password_matches(PASSWORD, stored)


def test_names_roles_and_passwords_are_checked() -> None:
    assert check_name("anna.k_1-2") == "anna.k_1-2"
    for bad in ("", "Anna", "a" * 65, "an na", "анна", "a:b"):
        with pytest.raises(AccountError):
            check_name(bad)
    assert parse_roles("support, accounting") == frozenset({"support", "accounting"})
    with pytest.raises(AccountError, match="unknown roles root"):
        parse_roles("support,root")
    with pytest.raises(AccountError, match="no role"):
        parse_roles(" , ")
    assert check_password("x" * 12) == "x" * 12
    with pytest.raises(AccountError, match="at least 12"):
        check_password("x" * 11)
