"""Secrets never reach output: storage URLs masked with SQLAlchemy's URL parser.

:func:`redact_url` hides the password of a database URL and the value of every query
parameter whose name contains ``password``, ``passwd``, ``pwd``, ``pass``, ``secret``, ``token``,
``key``, ``auth``, ``credential``, ``sig`` (or is ``odbc_connect``, which carries a whole connection string);
:func:`scrub` removes those values from free text such as a driver's error message::

    >>> from embedft.redact import redact_url, scrub
    >>> redact_url("postgresql+psycopg://:hunter2@db.example/optuna?sslpassword=pw2&sslmode=require")
    'postgresql+psycopg://:***@db.example/optuna?sslmode=require&sslpassword=***'
    >>> redact_url("journal:/runs/search/study.journal")
    'journal:/runs/search/study.journal'
    >>> scrub("password authentication failed for 'hunter2'", "postgresql://u:hunter2@h/db")
    "password authentication failed for '***'"
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

__all__ = ["redact_url", "scrub", "url_problem", "mask_urls", "mask_values", "MASK"]

MASK = "***"
"""What a secret is replaced with."""

_SECRET_WORDS = ("password", "passwd", "pwd", "pass", "secret", "token", "key", "auth", "credential", "odbc_connect", "signature", "sig")


def _secret_value(value: object) -> bool:
    """A query value that itself carries ``password=...`` (``options=-cpassword%3D...``, ``dsn=...;pwd=...``)."""
    values = value if isinstance(value, tuple) else (value,)
    return any(f"{w}=" in unquote_plus(str(v)).lower() for v in values for w in _SECRET_WORDS)


def _secret_name(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


def _parse(url: str) -> tuple[Any, list[str]]:
    """SQLAlchemy's URL (None if unparsable) and the pieces of a password holding a raw ``@``.

    SQLAlchemy reads ``user:p@ss@host`` as password ``p`` on host ``ss@host`` (and hands the
    driver that host): the password is put back together up to the last ``@``, and its pieces
    are secrets too.
    """
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not installed, or not a URL SQLAlchemy can read: the caller masks it all
        return None, []
    if not (parsed.host and "@" in parsed.host):
        return parsed, []
    extra, host = parsed.host.rsplit("@", 1)
    pieces = [str(parsed.password or ""), *extra.split("@")]
    return parsed.set(password=f"{parsed.password or ''}@{extra}", host=host), pieces


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``.

    A string without ``://`` (a path, ``journal:PATH``) is returned unchanged; a URL
    SQLAlchemy cannot parse keeps only its scheme (``scheme://***``).

    >>> redact_url("postgresql://user:p%40ss@host:5432/db?api_key=abc&x=1")
    'postgresql://user:***@host:5432/db?api_key=***&x=1'
    """
    if "://" not in url:
        return url
    parsed, _ = _parse(url)
    if parsed is None:
        return url.split("://", 1)[0] + "://" + MASK
    query = {k: ((MASK,) * len(v) if isinstance(v, tuple) else MASK) if _secret_name(k) or _secret_value(v) else v for k, v in parsed.query.items()}
    rendered = parsed.set(query=query).render_as_string(hide_password=True)
    return rendered.replace(quote_plus(MASK), MASK)


def url_problem(url: str) -> str | None:
    """Why SQLAlchemy would misread the database URL ``url`` (None: it reads it as written).

    >>> url_problem("postgresql://u:p@ss@host/db")
    "the password holds a raw '@'; percent-encode it as %40"
    >>> url_problem("postgresql://u:p%40ss@host/db") is None
    True
    """
    if "://" not in url:
        return None
    parsed, pieces = _parse(url)
    if parsed is None:
        return "SQLAlchemy cannot parse it; percent-encode special characters of the user name and password"
    if pieces:
        return "the password holds a raw '@'; percent-encode it as %40"
    return None


def _secrets(url: str) -> list[str]:
    """Every secret value of ``url``, as written and decoded/encoded, longest first."""
    if "://" not in url:
        return []
    parsed, values = _parse(url)
    if parsed is None:  # unparsable: whatever stands between '://' and the last '@', and every query value
        rest = url.split("://", 1)[1]
        head, _, tail = rest.partition("?")
        if "@" in head:
            password = head.rsplit("@", 1)[0].partition(":")[2] or head.rsplit("@", 1)[0]
            values += [password, *password.split("@")]
        values += [pair.partition("=")[2] for pair in tail.split("&")]
    else:
        if parsed.password:
            values.append(str(parsed.password))
        for name, value in parsed.query.items():
            if _secret_name(name) or _secret_value(value):
                values += list(value) if isinstance(value, tuple) else [value]
    forms = {form for v in values if v for form in (v, quote(v, safe=""), quote_plus(v), unquote(v), unquote_plus(v))}
    return sorted((f for f in forms if f), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with every secret of ``url`` (password, secret query values) replaced by ``***``.

    Plain and URL-encoded forms are both removed, and the URL itself is shown redacted.

    >>> scrub("cannot connect to postgresql://u:p%40ss@h/db (user u, password p@ss)", "postgresql://u:p%40ss@h/db")
    'cannot connect to postgresql://u:***@h/db (user u, password ***)'
    """
    if url and url in text:
        text = text.replace(url, redact_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, MASK)
    return text


_URL_CANDIDATE = None


def mask_urls(text: str) -> str:
    """``text`` with every URL in it that carries a password or a secret parameter shown redacted.

    Candidates are found by their ``scheme://`` start and parsed with :func:`redact_url`'s parser;
    a URL without a secret is left exactly as written.

    >>> mask_urls("cannot load https://user:hunter2@example.com/data.csv (not found)")
    'cannot load https://user:***@example.com/data.csv (not found)'
    >>> mask_urls("see https://example.com/docs")
    'see https://example.com/docs'
    """
    global _URL_CANDIDATE
    if ":/" not in text or ("@" not in text and "=" not in text):
        return text
    if _URL_CANDIDATE is None:
        import re

        _URL_CANDIDATE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+[^\s'\"<>()\[\]{},;]+")

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        if "://" not in url:  # e.g. a path mangled to "https:/..." by a Path(): mask any "user:pass@" part
            rest = url.partition(":/")[2]
            host = rest.lstrip("/").split("/", 1)[0]
            if "@" in host and ":" in host.split("@", 1)[0]:
                user = host.split("@", 1)[0].split(":", 1)[0]
                return url.replace(host.split("@", 1)[0], f"{user}:{MASK}", 1)
            return url
        return redact_url(url) if _secrets(url) else url

    return _URL_CANDIDATE.sub(one, text)


def mask_values(value: Any) -> Any:
    """``value`` with :func:`mask_urls` applied to every string in it, at any depth (dicts, lists, tuples).

    >>> mask_values({"choices": ["https://u:pw@example.com/m", 3]})
    {'choices': ['https://u:***@example.com/m', 3]}
    """
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, dict):
        return {k: mask_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_values(v) for v in value)
    return value
