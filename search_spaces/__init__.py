"""Declarative search spaces, one YAML file per ablation, shipped with the package.

Only :mod:`core.sweep` reads them; these helpers just say where they are, so that a
script can name an ablation (``"aug_matrix"``) instead of a path.
"""

from __future__ import annotations

from pathlib import Path

SEARCH_SPACE_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped search spaces (file stems), sorted."""
    return sorted(path.stem for path in SEARCH_SPACE_DIR.glob("*.yaml"))


def locate(name_or_path: str | Path) -> Path:
    """The YAML file for a shipped name (``aug_matrix``) or an explicit path.

    A value that names an existing file wins, so researchers can keep their own grids
    outside the package; otherwise the name is looked up among the shipped ones.
    """
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate.resolve()
    shipped = SEARCH_SPACE_DIR / f"{candidate.stem}.yaml"
    if candidate.suffix in ("", ".yaml") and candidate.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"search space {str(name_or_path)!r} not found: not an existing file and not one of "
        f"the shipped ones ({', '.join(available()) or 'none'}) in {SEARCH_SPACE_DIR}"
    )
