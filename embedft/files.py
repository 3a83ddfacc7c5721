"""What embedft may write and delete: output-folder checks, ownership markers, atomic writes, the cache root.

embedft deletes or replaces only folders it wrote itself. Every folder it writes as a unit
(a run, a search, saved splits, a pulled model, the cache root) carries a marker file,
:data:`MARKER`, naming what wrote it. A folder without the marker is the user's: it is never
emptied, replaced or removed, whatever the flags::

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "notes.txt").write_text("mine")
    4
    >>> owner(root) is None
    True
    >>> mark(root / "run", "run") and owner(root / "run")
    'run'

Nothing else in embedft calls ``shutil.rmtree``: removal goes through :func:`remove_owned`,
replacement through :func:`replace_dir`, and a folder is checked with :func:`check_output_dir`
before any model loads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from embedft.errors import ConfigError, EmbedftError, OutputExistsError

__all__ = [
    "MARKER",
    "KINDS",
    "mark",
    "owner",
    "check_output_dir",
    "check_file_target",
    "new_scratch",
    "remove_stale_scratch",
    "replace_dir",
    "remove_owned",
    "atomic_write_text",
    "replacing",
    "default_cache_root",
    "prepare_cache_root",
    "OutputError",
]

logger = logging.getLogger(__name__)

MARKER = ".embedft-output"
"""The file that marks a folder as written by embedft (JSON: ``{"written_by": "embedft", "kind": ...}``)."""

KINDS = ("run", "search", "curve", "splits", "model", "cache", "scratch")
"""What a marked folder holds: a training run, a search, a learning curve, saved splits, a pulled model, the cache root, a scratch folder."""


class OutputError(EmbedftError, OSError):
    """An output folder cannot be written (read-only, under a file, no space left)."""


def mark(folder: str | os.PathLike, kind: str, *, complete: bool = False, at: str | os.PathLike | None = None) -> Path:
    """Create ``folder`` if needed and mark it as an embedft ``kind`` folder; returns the folder.

    The marker records the folder's own path (``at``: where it is about to be renamed to), so a
    marker copied into another folder does not make that folder embedft's. ``complete`` records
    the folder's entries as they are now (a finished run, saved splits): a file added later by
    someone else then keeps embedft from replacing the folder.
    """
    if kind not in KINDS:  # pragma: no cover - a programming error
        raise ValueError(f"unknown folder kind {kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from embedft import __version__

    data: dict[str, object] = {"written_by": "embedft", "kind": kind, "version": __version__, "path": str(_resolved(at or folder))}
    if complete:
        data["entries"] = sorted(_tree(folder) - {MARKER})
    if kind == "scratch":
        data["pid"], data["host"] = os.getpid(), _host()
    (folder / MARKER).write_text(json.dumps(data) + "\n", encoding="utf-8")
    return folder


def _tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, as relative POSIX paths (symlinks not followed)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        found.update((rel / name).as_posix() for name in [*dirnames, *filenames])
    return found


def _marker_data(folder: Path) -> dict:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _host() -> str:
    import socket

    return socket.gethostname()


def _foreign_entries(folder: Path) -> list[str]:
    """Files and folders (at any depth) of a complete embedft folder that embedft did not write there."""
    listed = _marker_data(folder).get("entries")
    if not isinstance(listed, list):
        return []
    return sorted(_tree(folder) - set(listed) - {MARKER})


def _alive(pid: object, host: object) -> bool:
    """Whether the process that made a scratch folder may still be running (on another host: assume so)."""
    if not isinstance(pid, int):
        return False  # no owner recorded: left by an older embedft, stale
    if host != _host():
        return True
    if pid == os.getpid():
        return False  # this process starts over for the same folder: its earlier scratch is done with
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner(folder: str | os.PathLike) -> str | None:
    """The kind of embedft folder ``folder`` is, or None when embedft did not write it."""
    path = Path(folder) / MARKER
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and data.get("written_by") == "embedft" and data.get("kind") in KINDS):
        return None
    try:
        here = str(_resolved(folder))
    except OSError:
        return None
    if data.get("path") != here:  # a marker copied (or a folder moved) from elsewhere: not proof embedft wrote this one
        return None
    return str(data["kind"])


def _resolved(path: str | os.PathLike) -> Path:
    # resolve() follows each symlink before applying a following "..", as the OS does (abspath would not).
    return Path(path).expanduser().resolve(strict=False)


_SCRATCH_SUFFIX = len(".tmp-12345678.") + 2  # what a scratch or old-copy name adds to the folder's name


def _name_max(where: Path) -> int:
    try:
        return int(os.pathconf(where, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _protected(out: Path) -> str | None:
    """Why ``out`` may never be an output folder (the root, the home folder, the working directory)."""
    if out == Path(out.anchor):
        return "the file-system root"
    if out == _resolved(Path.home()):
        return "the home folder"
    if out == _resolved(Path.cwd()):
        return "the working directory"
    return None


def _display(path: str | os.PathLike) -> str:
    return str(path)


def check_output_dir(
    path: str | os.PathLike,
    *,
    kind: str,
    field: str = "output_dir",
    overwrite: bool = False,
    inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
    resume: bool = False,
) -> Path:
    """Check that embedft may write the ``kind`` folder ``path``, before anything expensive happens.

    Refused, each with one :class:`~embedft.errors.EmbedftError` line naming ``field``:

    - the file-system root, the home folder or the working directory itself;
    - a folder that equals or contains one of ``inputs`` (``(field, path)`` pairs: the data, the
      config file, a local base or guide model), so that replacing it can never take an input along;
    - a path that is a file, or lies under a file;
    - an existing non-empty folder without embedft's marker (the user's: never touched);
    - a marked folder of another kind, or (``kind == "run"``) a finished run without ``overwrite``;
    - a place where nothing can be written (a write probe in the nearest existing folder).

    ``resume`` accepts a marked folder of the same kind as it is (a search continues in its folder).
    Returns the absolute path.
    """
    shown = _display(path)
    try:
        return _check_output_dir(path, shown, kind=kind, field=field, overwrite=overwrite, inputs=inputs, resume=resume)
    except EmbedftError:
        raise
    except OSError as exc:  # a name too long for the file system, a loop of symlinks, ...
        raise OutputError(f"cannot use the output path: {exc.strerror or exc}", field=field, expected="a usable folder path", found=shown) from None


def _check_output_dir(path: str | os.PathLike, shown: str, *, kind: str, field: str, overwrite: bool, inputs: Iterable[tuple[str, str | os.PathLike | None]], resume: bool) -> Path:
    if Path(path).expanduser().is_symlink():  # a swap would replace the link, not the folder it points to
        raise OutputError("the output path is a symbolic link", field=field, expected="a real folder path (give the folder the link points to)", found=shown)
    out = _resolved(path)
    why = _protected(out)
    if why is not None:
        raise ConfigError(f"refusing to use {why} as an output folder", field=field, expected="a folder of its own for embedft's output", found=shown)
    for input_field, value in inputs:
        if value is None or str(value) == "":
            continue
        candidate = Path(str(value)).expanduser()
        try:
            if not candidate.exists():
                continue
            inp = _resolved(candidate)
        except OSError:  # an input path that cannot be used is reported when it is read
            continue
        if _is_within(inp, out):
            raise ConfigError(
                f"the output folder {'is' if inp == out else 'contains'} an input ({input_field})",
                field=field,
                expected=f"a folder that does not hold {input_field}",
                found=f"{shown} (holds {value})",
            )
    for parent in [out, *out.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                what = "a file" if parent == out else f"under the file {parent}"
                raise OutputError(f"the output path is {what}", field=field, expected="a folder path", found=shown)
            break
    if out.is_dir():
        try:
            entries = [e.name for e in out.iterdir()]
        except OSError as exc:
            raise OutputError(f"cannot read the output folder: {exc.strerror or exc}", field=field, expected="a readable folder", found=shown) from None
        if entries:
            found_kind = owner(out)
            if found_kind is None:
                raise OutputExistsError(
                    "the output folder is not empty and is not an embedft output; embedft will not touch it",
                    field=field,
                    expected="a new or empty folder, or one embedft wrote",
                    found=shown,
                )
            if found_kind != kind:
                raise OutputExistsError(
                    f"the output folder holds an embedft {found_kind}, not a {kind}",
                    field=field,
                    expected=f"a new or empty folder, or an embedft {kind} folder",
                    found=shown,
                )
            foreign = _foreign_entries(out)
            if foreign:
                raise OutputExistsError(
                    "the output folder holds files embedft did not write; embedft will not replace it",
                    field=field,
                    expected="an embedft output as embedft left it (move the added files out first)",
                    found=f"{shown}: {', '.join(foreign[:5])}",
                )
            if kind in ("run", "curve") and not overwrite and not resume:
                what = "a model" if (out / "model").exists() else f"a {kind}"
                raise OutputExistsError(
                    f"output directory already holds {what}",
                    field=field,
                    expected="a new or empty directory",
                    found=shown,
                    hint="pass overwrite=True (CLI: --overwrite) to replace it",
                )
    _probe(out, field, shown)
    limit = _name_max(next(p for p in [out, *out.parents] if p.is_dir()))
    if len(os.fsencode(out.name)) + _SCRATCH_SUFFIX > limit:
        raise OutputError("the output folder's name is too long", field=field, expected=f"a name of at most {limit - _SCRATCH_SUFFIX} bytes", found=f"{len(os.fsencode(out.name))} bytes")
    return out


def check_file_target(path: str | os.PathLike, *, field: str = "path") -> Path:
    """Check that a new file can be written at ``path`` (it must not exist; its folder must exist and be writable)."""
    shown = _display(path)
    try:
        return _check_file_target(Path(path).expanduser(), shown, field)
    except EmbedftError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot use the path: {exc.strerror or exc}", field=field, expected="a usable file path", found=shown) from None


def _check_file_target(target: Path, shown: str, field: str) -> Path:
    if target.exists() or target.is_symlink():
        raise OutputExistsError("refusing to overwrite an existing file" if not target.is_dir() else "the path is a folder", field=field, expected="a new file", found=shown)
    parent = _resolved(target).parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a folder"
        raise OutputError(f"the folder for the file {what}", field=field, expected="a file in an existing folder", found=shown)
    _probe(parent, field, shown)
    return target


def _probe(out: Path, field: str, shown: str) -> None:
    """Try to write in ``out`` (or its nearest existing ancestor); a failure is one line, not a traceback later."""
    where = next((p for p in [out, *out.parents] if p.is_dir()), None)
    if where is None:  # pragma: no cover - the root always exists
        return
    try:
        fd, name = tempfile.mkstemp(prefix=".embedft-probe-", dir=where)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reasons = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOSPC: "no space left"}
        reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
        raise OutputError(f"cannot write the output folder ({reason})", field=field, expected="a writable location", found=f"{shown} (checked in {where})") from None


def new_scratch(out: Path) -> Path:
    """A marked scratch folder next to ``out`` where a result is assembled before :func:`replace_dir`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    mark(tmp, "scratch")
    return tmp


def remove_stale_scratch(out: Path) -> None:
    """Remove scratch folders for ``out`` left by a killed run (only marked ones: a user's folder stays)."""
    if not out.parent.is_dir():
        return
    import glob

    for stale in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        if stale.is_dir() and not stale.is_symlink() and owner(stale) == "scratch":
            data = _marker_data(stale)
            if _alive(data.get("pid"), data.get("host")):
                continue  # another run is assembling its result there
            logger.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)


def replace_dir(tmp: Path, out: Path, *, kind: str, overwrite: bool = True) -> Path:
    """Move the finished folder ``tmp`` to ``out``: the old ``out`` goes only after the new one is in place.

    ``out`` may be missing, empty, or a folder embedft marked as ``kind`` (a run only with
    ``overwrite``); anything else raises and ``tmp`` stays where it is.
    """
    if out.exists() or out.is_symlink():
        check_output_dir(out, kind=kind, overwrite=overwrite)
    mark(tmp, kind, complete=True, at=out)
    try:
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)  # checked above: empty, or embedft's own earlier copy
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, out)
    except BaseException:
        if tmp.is_dir():
            mark(tmp, "scratch")  # still a scratch folder: the caller (or the next run) removes it
        raise
    return out


def remove_owned(path: str | os.PathLike, kinds: Iterable[str] | None = None) -> bool:
    """Delete ``path`` only when embedft marked it (and, with ``kinds``, as one of them); True when removed.

    A finished folder to which someone added files stays too (the rule :func:`check_output_dir` applies).
    """
    path = Path(path)
    if not path.exists() or path.is_symlink():
        return False
    kind = owner(path) if path.is_dir() else None
    if kind is None or (kinds is not None and kind not in set(kinds)):
        logger.warning("not removing %s: it is not a folder embedft wrote", path)
        return False
    foreign = _foreign_entries(path)
    if foreign:
        logger.warning("not removing %s: it holds files embedft did not write (%s)", path, ", ".join(foreign[:5]))
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path next to ``path``; once the block has written it, it replaces ``path`` by a rename.

    ``path`` is never rewritten in place (a hard-linked copy elsewhere keeps its content) and is
    never half-written; the temporary file is removed if the block fails. ``suffix`` keeps a
    file type visible to writers that infer it from the name (``.png``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def default_cache_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$EMBEDFT_CACHE_DIR``, else ``~/.cache/embedft``: the dataset and embedding caches' root.

    >>> str(default_cache_root("/tmp/x"))
    '/tmp/x'
    """
    return Path(root or os.environ.get("EMBEDFT_CACHE_DIR") or Path.home() / ".cache" / "embedft").expanduser()


def prepare_cache_root(root: str | os.PathLike | None = None, *, field: str = "data.cache_dir") -> Path:
    """The cache root, created and marked; a non-empty folder embedft did not write is refused.

    The default root (``~/.cache/embedft``) is embedft's by name and is adopted as it is.
    """
    path = default_cache_root(root)
    if owner(path) == "cache":
        return path
    default = _resolved(Path.home() / ".cache" / "embedft")
    if _resolved(path) != default:
        check_output_dir(path, kind="cache", field=field)
    try:
        mark(path, "cache")
    except OSError as exc:
        raise OutputError(f"cannot write the cache folder: {exc.strerror or exc}", field=field, expected="a writable folder", found=str(path)) from None
    return path
