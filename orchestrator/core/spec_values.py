"""Value checks the spec shares: plain counts, finite numbers in free-form sections, what counts as a secret."""

from __future__ import annotations

import math
import re
from types import UnionType
from typing import Any, Union, get_args, get_origin

ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_INT = 2**53  # larger counts are never meant, and JSON readers lose precision past it
# Environment variable names whose values are secrets: forwarded out of band, never stored. Besides the
# words that are secret anywhere in a name, KEY/PASS/AUTH/PWD/DSN count as whole words (OPENAI_KEY, not MONKEY).
SECRET_NAME_PATTERN = re.compile(
    r"(SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|ACCESS_KEY|API_?KEY|WEBHOOK|DATABASE_URL"
    r"|CONN(ECTION)?_?STR|(^|_)(KEY|PASS|PWD|AUTH|DSN)(_|$))", re.I)
# A value that carries a credential whatever its name: URL userinfo, connection-string keys.
CREDENTIAL_VALUE_PATTERN = re.compile(
    r"(://[^/\s@]+@|(AccountKey|SharedAccessSignature|SharedAccessKey|password|pwd)=)", re.I)


def is_int_field(annotation: Any) -> bool:
    return annotation is int or (get_origin(annotation) in (Union, UnionType) and int in get_args(annotation))


def check_finite(value: Any, where: str) -> None:
    """DeepSpeed's config is JSON: NaN/inf and numbers past JSON's exact range are always mistakes."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{str(key)[:80]}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite(item, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}; it must be a finite number")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ValueError(f"{where} is a {len(str(abs(value)))}-digit number; it must be less than or equal to "
                         f"{MAX_INT}")


def is_secret(name: str, value: str) -> bool:
    return bool(SECRET_NAME_PATTERN.search(name) or CREDENTIAL_VALUE_PATTERN.search(value))


def masked_set(item: str) -> str:
    """A `--set` item as it may be echoed: a credential-looking value is never shown."""
    key, sep, value = item.partition("=")
    return f"{key}{sep}***" if CREDENTIAL_VALUE_PATTERN.search(value) or CREDENTIAL_VALUE_PATTERN.search(item) else item


def check_env(env: dict[str, str], field: str) -> None:
    """Worker environment names and values: a bad name fails deep inside Ray (or silently), so say it here."""
    for name, value in env.items():
        if not ENV_NAME_PATTERN.match(name):
            shown = name if name.isprintable() else repr(name)[1:-1]  # no control characters in the message
            raise ValueError(f"{field} name '{shown}' is not a valid environment variable name; use letters, digits "
                             "and '_', not starting with a digit")
        if "\0" in value:
            raise ValueError(f"{field} value of {name} contains a NUL character, which environment variables cannot "
                             "hold")


def check_public_env(env: dict[str, str], secret: dict[str, str]) -> None:
    """public_env is shown everywhere (stored spec, jobs.db, Ray's job settings): nothing secret may go there."""
    check_env(env, "public_env")
    for name, value in env.items():
        if name in secret:
            raise ValueError(f"{name} is set in both env and public_env; keep it in one of them")
        if is_secret(name, value):
            raise ValueError(f"public_env.{name} looks like a secret (by its name or a credential in its value), "
                             "and public_env values are stored and shown; move it to env, which is never shown")
