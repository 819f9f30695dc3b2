"""Output folders that are checked before a run and cleaned up when it does not finish.

A report runs for a while; an output path that cannot be written must be refused before
that, not after (results lost). A run that is interrupted or fails removes what it made:
the folders it created and the files it wrote that were not there before. Files are
written atomically (a temporary name, then a rename), so an interrupted write never
leaves half a file where a previous run's file was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..spec import ErrorCode, FFAccelError


def _unwritable(param: str, path: Path, why: str) -> FFAccelError:
    return FFAccelError(ErrorCode.INVALID_PARAMETER, param,
                        f"the output folder must be one this process can create and write; got {path} ({why})")


def _exists(path: Path, param: str) -> bool:
    """Whether ``path`` exists; a path the system cannot even look up (a name too long, a loop of
    symbolic links) is the caller's bad input, refused naming ``param`` like any unusable path."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise _unwritable(param, path, e.strerror or type(e).__name__) from None
    return True


def _topmost_missing(folder: Path, param: str = "out") -> Path | None:
    """The topmost of ``folder`` and its parents that does not exist (None when ``folder`` exists)."""
    top = None
    p = folder
    while not _exists(p, param):
        top = p
        if p.parent == p:
            break
        p = p.parent
    return top


def _check_names(folder: Path, names: Iterable[str], param: str) -> None:
    """Each file the run will write in ``folder`` can be: an existing one is a file (replaced by a
    rename at the end), a new name is one the file system takes (not too long). Checked before the
    run, so that a run's results are never lost to a name found bad when they are written."""
    for name in names:
        path = folder / name
        if _exists(path, param):
            if not path.is_file():
                raise _unwritable(param, path, "it exists and is not a regular file")
            continue
        if os.path.islink(path):  # a dangling link: replaced by the rename like a file
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise _unwritable(param, path, f"cannot write it: {e.strerror or type(e).__name__}") from None
        os.close(fd)
        os.unlink(path)


def _make_dirs(folder: Path, param: str) -> Path | None:
    """Create ``folder`` and its missing parents; the topmost folder created (None if it existed)."""
    top = _topmost_missing(folder, param)
    if folder.exists() and not folder.is_dir():
        raise _unwritable(param, folder, "it exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(param, folder, f"cannot create it: {e.strerror or type(e).__name__}") from None
    return top


def check_writable(folder: Path, param: str = "out") -> Path | None:
    """Create ``folder`` if needed and prove a file can be written there.

    Returns the topmost folder this call created (None when ``folder`` existed), so that
    a caller can remove it again. Raises INVALID_PARAMETER naming ``param`` otherwise.
    """
    folder = Path(folder)
    made = _make_dirs(folder, param)
    try:
        fd, probe = tempfile.mkstemp(prefix=".ffaccel-probe-", dir=folder)
        try:
            os.close(fd)
        finally:
            os.unlink(probe)
    except OSError as e:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise _unwritable(param, folder, f"cannot write a file in it: {e.strerror or type(e).__name__}") from None
    return made


@contextlib.contextmanager
def output_folder(folder: Path, names: Iterable[str], param: str = "out") -> Iterator[Path]:
    """Check ``folder`` before a run; if the run does not finish, remove what it made there.

    ``names`` are the file names the run writes in ``folder``: only those that did not
    exist before are removed (never anything else in a folder that existed), and the
    folders this run created.
    """
    folder = Path(folder)
    made = _topmost_missing(folder, param)  # known before anything is created: an interrupt may come at any point
    names = list(names)
    existed = {n for n in names if _exists(folder / n, param)}
    finished = False
    try:
        check_writable(folder, param)
        _check_names(folder, names, param)
        yield folder
        finished = True
    finally:
        if not finished:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            elif folder.is_dir():
                for n in names:
                    if n not in existed:
                        with contextlib.suppress(OSError):  # never hide why the run ended
                            (folder / n).unlink()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # not mkstemp: its 0600 would stick to the file; this one gets the umask's mode like any other
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
