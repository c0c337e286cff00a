"""The errors of bad sweep input, named after what is wrong.

A *space file* is a YAML file in ``search_spaces/`` (or given by path): a **grid** (its
``axes`` expand to every cell) or a **search** (its ``search`` section is sampled by
Optuna). Every error here is a :class:`~core.config.ConfigError`, so the command line
shows it on one line and exits 2, before Ray starts.
"""

from __future__ import annotations

from core.sections import ConfigError


class SweepError(ConfigError):
    """A sweep request or a space file is invalid; the message names the file, the key or
    the flag, and the fix."""


class GridError(SweepError):
    """A grid (``axes:``) or a request built on it is invalid."""


class SearchError(SweepError):
    """A search (``search:``) or a request built on it is invalid."""
