"""The embedft error family.

Every error a user can cause derives from :class:`EmbedftError`. Errors about a
value carry the field that holds it, what was expected and what was found, so a
message always says what to change::

    >>> from embedft.errors import ConfigError
    >>> str(ConfigError("bad split ratios", field="data.splits", expected="ratios summing to 1", found="1.2"))
    'bad split ratios (field: data.splits; expected: ratios summing to 1; found: 1.2)'
"""

from __future__ import annotations

__all__ = [
    "EmbedftError",
    "ConfigError",
    "DataError",
    "ModelError",
    "OutputExistsError",
    "MissingDependencyError",
]


class EmbedftError(Exception):
    """Base class of every error embedft raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        expected: object = None,
        found: object = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.field = field
        self.expected = expected
        self.found = found
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.field is not None:
            parts.append(f"field: {self.field}")
        if self.expected is not None:
            parts.append(f"expected: {self.expected}")
        if self.found is not None:
            parts.append(f"found: {self.found}")
        text = self.message
        if parts:
            text += " (" + "; ".join(parts) + ")"
        if self.hint:
            text += f". {self.hint}"
        return text


class ConfigError(EmbedftError, ValueError):
    """A configuration value is missing, unknown or inconsistent."""


class DataError(EmbedftError, ValueError):
    """Input data cannot be read, mapped, cleaned or split."""


class ModelError(EmbedftError):
    """A base model cannot be found or loaded."""


class OutputExistsError(EmbedftError, FileExistsError):
    """The output directory already holds a result and overwrite is off."""


class MissingDependencyError(EmbedftError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str | None = None):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised with a blocked import in tests
        package = f'"embedft[{extra}]"' if extra else module.split(".")[0]
        raise MissingDependencyError(
            f"{module} is not installed",
            hint=f"install it with: pip install {package}",
        ) from exc
