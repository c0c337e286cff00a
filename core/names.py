"""Names that become folders, S3 keys and MLflow names: a run's, an experiment's, a trial's.

A name is joined to a results folder (``results_dir / run_name``), a Tune trial folder, an
object-store key and an MLflow name, so it is held to a set that means the same thing in
all of them: letters, digits, ``.``, ``_``, ``-`` (and ``+`` in trial names, which join
augmentation codes, ``FD+TM``), at most 128 characters, not starting with a dot. Anything
else (``../``, ``/``, an absolute path, a right-to-left override) is refused before
anything is written, naming the character.
"""

from __future__ import annotations

import re
import unicodedata

from core.sections import ConfigError

MAX_NAME_LENGTH = 128
_SAFE = {"run": "A-Za-z0-9._-", "experiment": "A-Za-z0-9._-", "trial": "A-Za-z0-9._+-"}


def check_name(name: str, what: str, flag: str = "") -> str:
    """``name`` if it is a safe ``what`` (``run``, ``experiment`` or ``trial``) name; a
    :class:`ConfigError` naming the first offending character (by code point and Unicode
    name, so an invisible one shows) and the rule otherwise."""
    allowed = _SAFE[what]
    where = f"{what} name {name!r}" + (f" ({flag})" if flag else "")
    rule = (
        f"use letters, digits and {' '.join(c for c in allowed.replace('A-Za-z0-9', ''))}, "
        f"at most {MAX_NAME_LENGTH} characters, not starting with a dot"
    )
    if not name:
        raise ConfigError(f"{where} is empty; {rule}")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{where} is {len(name)} characters long; {rule}")
    if name.startswith("."):
        raise ConfigError(f"{where} starts with a dot; {rule}")
    bad = re.search(f"[^{allowed}]", name)
    if bad:
        char = bad.group()
        label = unicodedata.name(char, "a control character")
        raise ConfigError(
            f"{where} holds {char!r} (U+{ord(char):04X}, {label}) at position {bad.start()}; {rule}"
        )
    return name
