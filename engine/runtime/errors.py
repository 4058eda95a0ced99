"""User mistakes (a flag, a file, a run directory) as one exception type, so engine code can
report them and every launcher turns them into one line ``error: ...`` and exit code 2."""
from __future__ import annotations

from typing import NoReturn


class UsageError(Exception):
    """A mistake the user can fix; the message says what and how."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)
