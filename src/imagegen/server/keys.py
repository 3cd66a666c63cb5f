"""Who calls: the operator's key sees and cancels every job; each user's key only the jobs made with it (and their
images), so that a team can share one server without seeing each other's work.

A key file (`--api-key-file`) holds one key per line: a bare KEY is the operator's (at most one; a file of one
bare line is the single key of earlier versions), NAME:KEY a user's. Empty lines and lines starting with # are
skipped.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from imagegen.errors import InvalidRequest

USER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Caller:
    """The key a request came with: a user's name, or None for the operator (also a server without keys)."""

    name: str | None = None

    def sees(self, owner: str | None) -> bool:
        """Whether a job made by `owner` (None: by the operator) is this caller's to see and cancel."""
        return self.name is None or owner == self.name


OPERATOR = Caller()


def caller_for(given: str, operator_key: str | None, user_keys: tuple[tuple[str, str], ...]) -> Caller | None:
    """The caller whose key was given, None for no known key; every key is compared in constant time."""
    found = None
    for name, key in ((None, operator_key), *user_keys):
        if key is not None and hmac.compare_digest(given.encode(), key.encode()):
            found = Caller(name)
    return found


def read_key_file(path: Path) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """(the operator's key, ((user name, key), ...)) from a key file."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"--api-key-file {path}: {getattr(error, 'strerror', None) or error}") from None
    operator, users = None, []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, key = line.partition(":")
        if not colon:
            if operator is not None:
                raise InvalidRequest(f"--api-key-file {path}, line {number}: a second bare key; the operator has one "
                                     "(give users NAME:KEY)")
            operator = line
            continue
        if not USER_NAME.fullmatch(name) or not key:
            raise InvalidRequest(f"--api-key-file {path}, line {number}: write NAME:KEY, NAME of letters, digits, "
                                 "'_', '.', '-'")
        users.append((name, key))
    keys = [key for key in (operator, *(key for _, key in users)) if key is not None]
    if not keys:
        raise InvalidRequest(f"--api-key-file {path} is empty (it holds no key)")
    if len(set(keys)) < len(keys) or len({name for name, _ in users}) < len(users):
        raise InvalidRequest(f"--api-key-file {path}: each key and each user name may appear once")
    return operator, tuple(users)
