"""The embedft error family.

Every error a user can cause derives from :class:`EmbedftError`. Errors about a
value carry the field that holds it, what was expected and what was found, so a
message always says what to change::

    >>> from embedft.errors import ConfigError
    >>> str(ConfigError("bad split ratios", field="data.splits", expected="ratios summing to 1", found="1.2"))
    'bad split ratios (field: data.splits; expected: ratios summing to 1; found: 1.2)'

An error is always one line, and each echoed value is capped (the full length is stated)::

    >>> str(ConfigError("bad header", field="data.columns", found="a,b\\n" + "c" * 5000))[-45:]
    'cccccccccccccccccccccc... (5,004 characters))'
"""

from __future__ import annotations

from types import ModuleType

__all__ = [
    "EmbedftError",
    "ConfigError",
    "DataError",
    "ModelError",
    "OutputExistsError",
    "MissingDependencyError",
    "TrainingError",
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
        from embedft.redact import mask_urls

        return mask_urls(self._parts())

    def _parts(self) -> str:
        parts = []
        if self.field is not None:
            parts.append(f"field: {_echo(self.field)}")
        if self.expected is not None:
            parts.append(f"expected: {_echo(self.expected)}")
        if self.found is not None:
            parts.append(f"found: {_echo(self.found)}")
        text = _one_line(str(self.message), MAX_MESSAGE)
        if parts:
            text += " (" + "; ".join(parts) + ")"
        if self.hint:
            text += f". {_one_line(str(self.hint), MAX_MESSAGE)}"
        return text


MAX_VALUE = 200
"""Characters of one echoed value (``field``, ``expected``, ``found``) kept in an error line."""
MAX_MESSAGE = 400
"""Characters of an error's message (and of its hint) kept in an error line."""

# Every character str.splitlines() breaks at: an error is one line on the console.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ESCAPED_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in _LINE_BREAKS})


def _cap(text: str, limit: int, total: int) -> str:
    """``text`` (the first characters of a value of ``total`` characters) cut to ``limit``."""
    return text if len(text) <= limit and total <= limit * 4 else f"{text[:limit]}... ({total:,} characters)"


def _one_line(text: str, limit: int) -> str:
    """Prose (a message, a hint, an upstream error's text): line breaks become spaces."""
    return _cap(" ".join(part.strip() for part in text[: limit * 4].splitlines() if part.strip()), limit, len(text))


def _echo(value: object) -> str:
    """A value echoed back to the user: line breaks shown escaped, capped at ``MAX_VALUE``."""
    text = str(value)
    return _cap(text[: MAX_VALUE * 4].translate(_ESCAPED_BREAKS), MAX_VALUE, len(text))


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


class TrainingError(EmbedftError):
    """Training went wrong in a way the settings or the data can fix (e.g. a NaN loss)."""

    @classmethod
    def non_finite_loss(cls, value: float, step: int, learning_rate: float, loss_kwargs: dict | None = None) -> TrainingError:
        """The error for a NaN or infinite training loss, saying what to try.

        >>> error = TrainingError.non_finite_loss(float("nan"), 3, 0.5)
        >>> error.message.split(";")[0], error.field
        ('training loss is nan at step 3', 'training.learning_rate')
        """
        kwargs = f", check training.loss_kwargs ({', '.join(f'{k}={v!r}' for k, v in loss_kwargs.items())})" if loss_kwargs else ""
        return cls(
            f"training loss is {value} at step {step}; try a lower learning rate, check the data and labels (no NaN, labels in range){kwargs}, or train in fp32 (training.precision: fp32)",
            field="training.learning_rate",
            expected="settings that keep the loss finite",
            found=learning_rate,
        )


def require(module: str, extra: str | None = None) -> ModuleType:
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
