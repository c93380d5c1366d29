"""The one way autoconf writes a file a user holds (plans, profiles, pictures, scripts, reports, metrics).

- Never through a symbolic link, nor over a device, pipe or socket: such a path is refused, with or without `force`.
- Never over an existing file without `force` (and the check is atomic: without `force` the finished file is
  hard-linked into place, which fails if anything appeared there meanwhile).
- Atomic: the bytes go to a temporary created exclusively, under an unpredictable name, in the target folder
  (`tempfile.mkstemp`), are fsynced, then renamed over the target; a failed write removes its temporary.

Failures are UserErrors naming the path. Pure Python: every layer may import this module.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, IO

from autoconf.errors import UserError


def check_new(path: str | os.PathLike, force: bool = False, hint: str = "choose another path",
              package_ok: bool = False) -> Path:
    """Refuses (UserError) a path that is a symbolic link, a folder, anything else that is not a regular file (a
    device, a FIFO, a socket: renaming over one would replace it), one inside autoconf's own package (its bundled
    profiles; unless `package_ok`: the tool that measures the bundled CPU profile), or (without `force`) an existing
    file."""
    path = Path(path)
    if str(path) in ("", "."):
        raise UserError("an output path must not be empty")
    if "\0" in str(path):
        raise UserError(f"cannot write {str(path)!r}: a path cannot hold a NUL character")
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; autoconf does not write through links (remove it or {hint})")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file path")
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a regular file (a device, a pipe or a socket); autoconf writes only regular "
                        f"files: {hint}")
    if not package_ok and _inside(path, PACKAGE_DIR):
        raise UserError(f"{path} is inside autoconf's own package folder ({PACKAGE_DIR}), whose bundled profiles "
                        f"every run reads; {hint} outside it")
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite it or {hint}")
    return path


# The installed package: nothing autoconf writes goes in it (its bundled profiles, read by name, are files there).
PACKAGE_DIR = Path(__file__).resolve().parent


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` (resolved, links followed) lies within `folder`."""
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):  # (a loop of links, an unreadable folder: check_new refuses those itself)
        return False


# The Software text of every picture autoconf draws (report/pictures.py save_figure): a later run with --force
# removes a picture of its own that it no longer writes, and never a file of the user's that has the same name.
PNG_SOFTWARE = "autoconf"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def drawn_by_autoconf(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file (not a link) holding a PNG whose Software text, before its image data, is
    PNG_SOFTWARE: a picture autoconf drew."""
    import struct

    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return False
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return False
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND") or length > 1 << 16:
                    return False
                data = f.read(length + 4)[:length]  # (and the chunk's CRC)
                if kind == b"tEXt" and data == b"Software\0" + PNG_SOFTWARE.encode():
                    return True
    except OSError:
        return False


def is_version(value, expected: int) -> bool:
    """Whether a file's "version" field is the integer `expected` (JSON's true and 1.0 equal 1 in Python, and are
    not it)."""
    return type(value) is int and value == expected


# Numbers as a user types them: ASCII digits only (Python's int() and float() also read "1_0" and the digits of
# other scripts, "٨", which no option means).
_ASCII_INT = re.compile(r"\s*[+-]?[0-9]+\s*")
_ASCII_FLOAT = re.compile(r"\s*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity|nan)\s*", re.IGNORECASE)


def json_sha256(obj) -> str:
    """The SHA-256 (hex) of a JSON value with its keys sorted and no spaces: the same content gives the same digest
    however its file was indented or ordered."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def ascii_number(text: str, integer: bool = True) -> bool:
    """Whether `text` is an integer (or, with `integer` False, a decimal or inf/nan) written in ASCII digits."""
    return bool((_ASCII_INT if integer else _ASCII_FLOAT).fullmatch(str(text)))


def shown(text: str, limit: int = 80) -> str:
    """`text` for a one-line message: as it is up to `limit` characters, else its start and an ellipsis."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def gib_figures(*nbytes: float, least: int = 1) -> list[str]:
    """Byte counts shown side by side in GiB, with one number of decimals for all: at least `least`, and as many as
    the smallest nonzero count needs for two significant digits (at most three, a MiB), so that the figures add up as
    the counts do ("needs 0.274 GiB of 0.036 GiB, 0.238 GiB over", where one decimal said 0.3 of 0.0, 0.2 over)."""
    import math

    small = min((abs(n) / 2**30 for n in nbytes if n), default=1.0)
    decimals = max(least, min(3, 1 - math.floor(math.log10(small))))
    return [f"{n / 2**30:.{decimals}f}" for n in nbytes]


def plain(value: float, digits: int = 3, sign: bool = False) -> str:
    """`value` rounded to about `digits` significant digits and written without an exponent or trailing zeros,
    thousands separated: 12,345 / 340 / 12.3 / 0.000084 (where `g` formats wrote 1.23e+04 and 8.4e-05); with
    `sign`, a leading + too."""
    import math

    if not math.isfinite(value) or value == 0:
        return f"{value:+g}" if sign else f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:{'+' if sign else ''},.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text  # (as `g` does: 1.50 -> 1.5, 1.00 -> 1)


def quoted(value, limit: int = 60) -> str:
    """`value` as a one-line message echoes it: its repr, shortened to `limit` characters (`shown`)."""
    return shown(repr(value), limit)


def listed(names: list, first: int = 5) -> str:
    """The first `first` of `names` and how many more: a list of typos that stays one short line."""
    return ", ".join(names[:first]) + (f" and {len(names) - first} more" if len(names) > first else "")


def did_you_mean(arg, names) -> str:
    """"; did you mean 'x'?" naming the one of `names` closest to `arg` (difflib's ratio at least 0.6), else ""."""
    import difflib

    close = difflib.get_close_matches(str(arg), [str(n) for n in names], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def named_input(arg: str, option: str) -> Path | None:
    """The file or folder an input argument (`option`, e.g. --model) names; None where nothing is there, also for
    a name no file system holds (too long, a NUL). An empty argument is refused (UserError)."""
    if not str(arg).strip():
        listing = {"--model": "`autoconf models`", "--cluster": "`autoconf profiles`"}.get(option)
        raise UserError(f"{option} is empty; give a bundled name{f' ({listing})' if listing else ''} or a file path")
    path = Path(arg)
    try:
        return path if path.exists() else None
    except (OSError, ValueError):
        return None


def input_files(source: str | os.PathLike | None) -> list[Path]:
    """The file a --model or --cluster argument reads (a folder's config.json); none for a bundled name."""
    if source is None:
        return []
    path = Path(source)
    path = path / "config.json" if path.is_dir() else path
    return [path] if path.is_file() else []


def refuse_overwriting_inputs(outputs: dict[str, str | os.PathLike | None],
                              inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuses (UserError) an output that is one of the run's input files however it is spelled (a relative path,
    `..`, a hard link), which --force would replace, and two outputs at one path (the second would replace the
    first): `outputs` and `inputs` map what the user called them (an option, "the model config") to paths."""
    seen: dict[Path, str] = {}
    for name, out in outputs.items():
        if out is None:
            continue
        where = Path(out).resolve()
        if where in seen:
            raise UserError(f"{seen[where]} and {name} are the same file {out}; give each its own path")
        seen[where] = name
    for name, out in outputs.items():
        if out is None or not Path(out).is_file():
            continue
        for what, source in inputs.items():
            if any(os.path.samefile(out, f) for f in input_files(source)):
                raise UserError(f"{name} {out} is {what} this run reads; --force would replace it: choose another "
                                f"path")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_with(path: str | os.PathLike, fill: Callable[[IO[bytes]], None], force: bool = False,
               mode: int = 0o666, package_ok: bool = False) -> Path:
    """Creates `path` atomically from what `fill(f)` writes to a binary file object (see the module docstring)."""
    path = check_new(path, force, package_ok=package_ok)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode & ~_umask())
        if force:
            check_new(path, force=True, package_ok=package_ok)
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails with EEXIST if anything (file or link) appeared at `path`
            except OSError as err:
                if err.errno == errno.EEXIST:
                    raise UserError(f"{path} already exists; pass --force to overwrite it or choose another "
                                    f"path") from None
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                check_new(path)  # a file system without hard links: check, then rename
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
        tmp = None
        fsync_dir(path.parent)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def write_file(path: str | os.PathLike, data: str | bytes, force: bool = False, mode: int = 0o666,
               package_ok: bool = False) -> Path:
    """Writes text (UTF-8) or bytes to `path` atomically; refuses links, paths in the package (unless `package_ok`),
    and existing files unless `force`."""
    blob = data.encode() if isinstance(data, str) else data
    return write_with(path, lambda f: f.write(blob), force=force, mode=mode, package_ok=package_ok)


def open_append(path: str | os.PathLike) -> IO[str]:
    """Opens `path` for appending text (created if missing), refusing to follow a symbolic link."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link; autoconf does not write through links") from None
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return os.fdopen(fd, "a")


def fsync_dir(path: Path) -> None:
    """Makes a rename in the folder `path` durable (best effort: a folder that cannot be opened is skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
