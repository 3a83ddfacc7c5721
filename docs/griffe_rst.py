"""A griffe extension for the API reference: reST habits in the docstrings, shown as Markdown.

The docstrings are written for ``help()`` as well as for this site, so they use Sphinx roles
(``:class:`RunConfig```) and ``Example::`` before an indented block. Here a role becomes inline
code (``RunConfig``; a leading ``~`` keeps the last part of the dotted name) and a trailing ``::``
becomes ``:`` (the indented block below it is already a Markdown code block).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def markdown(text: str) -> str:
    """``text`` with Sphinx roles as inline code and ``Example::`` as ``Example:``."""
    return _LITERAL.sub(r"\1:", _ROLE.sub(_role, text))


class ReSTToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
