"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import json
import math
import os
import re
import secrets
import signal
import stat
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from tqdm import tqdm


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so that no other thread ever sees 0)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def refuse_symlink(path: str | os.PathLike) -> None:
    """Raise if ``path`` is a symbolic link: ohem writes files it made itself, never through a link."""
    if os.path.islink(path):
        raise ValueError(
            f"{path}: is a symbolic link; ohem does not write through links it did not make "
            f"(remove the link or write elsewhere)"
        )


# A write that fails for want of room or of a writable disk: one line naming the file, never a traceback.
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG})


def disk_error(error: BaseException | None) -> OSError | None:
    """The OSError of a full, read-only or over-quota disk behind ``error``: itself, or the error a library's
    error arose from (``torch.save`` turns a failed write into ``RuntimeError: ... unexpected pos``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_ERRORS:
            return error
        error = error.__cause__ or error.__context__
    return None


def write_failure(path: str | os.PathLike, error: OSError) -> OSError:
    """``error`` as ``PATH: no space left on device (...)`` (what ``ohem``'s commands print of an OSError)."""
    reason = os.strerror(error.errno or 0)
    reason = reason[:1].lower() + reason[1:]
    name = Path(path).name
    return OSError(error.errno, f"{reason} (not written; an earlier {name}, if any, is left as it was)", str(path))


@contextlib.contextmanager
def naming_disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """A disk error raised in the block (directly, or behind a library's error) becomes ``write_failure``."""
    try:
        yield
    except Exception as e:
        if (cause := disk_error(e)) is None:
            raise
        raise write_failure(path, cause) from e


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, binary: bool = False, make_parents: bool = False) -> Iterator[IO[Any]]:
    """A file object on a temporary sibling of ``path``, renamed over ``path`` only when the block
    succeeds: an interrupted or failed write never leaves a truncated or half-written ``path``
    (``atomic_open_at`` in ``path``'s folder). ``path`` must not be a symbolic link or a folder."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    with naming_disk_errors(path):
        dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        with atomic_open_at(dir_fd, path.name, path, binary) as f:
            yield f
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_open_at(dir_fd: int, name: str, shown: Path, binary: bool = False) -> Iterator[IO[Any]]:
    """``atomic_open`` of ``name`` in the folder ``dir_fd`` (errors name ``shown``): a temporary
    ``.NAME.XXXXXXXX.tmp`` made with ``O_EXCL | O_NOFOLLOW``, renamed over ``name`` when the block succeeds.
    The file gets the permissions of the file it replaces, else ``0o666`` less the umask (as ``open``
    would give)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    else:
        if stat.S_ISLNK(info.st_mode):
            refuse_symlink(shown)  # raises: the message of every writer
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(shown))
        mode = stat.S_IMODE(info.st_mode)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"  # TEMPORARY below: removed if left behind
        try:
            with naming_disk_errors(shown):
                fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    try:
        with naming_disk_errors(shown):  # a full disk: the temporary file goes, ``name`` stays as it was
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


# atomic_open's temporary siblings: ``.NAME.`` + 8 random hex characters + ``.tmp``
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files ``atomic_open`` left in ``folder`` when its process was killed (``kill -9``
    mid-write: e.g. a half-written ``.checkpoint_last.pt.ab12cd34.tmp``); only regular files of exactly
    that name pattern, not in subfolders. Call with the folder's lock held (no writer of ours is live)."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(os.fspath(folder)):
            if TEMPORARY.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


class _AppendFile(io.TextIOWrapper):
    """A text file opened to append whose failed writes (a full disk) name the file."""

    path: str

    def write(self, text: str) -> int:
        with naming_disk_errors(self.path):
            return super().write(text)

    def flush(self) -> None:
        with naming_disk_errors(self.path):
            super().flush()

    def close(self) -> None:
        with naming_disk_errors(self.path):
            super().close()


def open_append(path: str | os.PathLike, dir_fd: int | None = None, name: str | None = None) -> IO[str]:
    """``open(path, "a")`` that refuses a symbolic link (``O_NOFOLLOW``) and keeps the umask; a write that
    fails for a full or read-only disk is a one-line error naming ``path``. With ``dir_fd``: the file
    ``name`` in that folder (``ohem.output_folder``), ``path`` only named in errors."""
    if dir_fd is None:
        refuse_symlink(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    with naming_disk_errors(path):
        raw = os.fdopen(os.open(name or path, flags, 0o666, dir_fd=dir_fd), "ab")
    f = _AppendFile(raw, encoding="utf-8")
    f.path = str(path)
    return f


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it names a regular file (symlinks followed); else FileNotFoundError (missing) or
    ValueError (a directory, FIFO, device, ... or unreadable), without opening it: reading a FIFO or a
    device could block forever."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path}: no such file") from None
    except (OSError, ValueError) as e:  # ValueError: an embedded NUL byte
        reason = one_line(getattr(e, "strerror", None) or str(e))
        raise ValueError(f"{what} {path}: cannot be read ({reason})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
        raise ValueError(f"{what} {path}: is {kind}, not a regular file")
    return path


def check_output_folder(path: str | os.PathLike, flag: str = "--out", inside: str | os.PathLike | None = None) -> Path:
    """Refuse ``path`` as a folder to write into, reading only: when it (or, given ``inside``, the folder the
    command owns, any folder between ``inside`` and ``path``) is a symbolic link; when it exists and is not a
    folder; when it, or the nearest folder above it that exists (where it would be made), is not writable.
    The folders above ``path`` (above ``inside``) are taken as given: they may be links, e.g. to another disk."""
    path = Path(path)
    chain = [path]
    if inside is not None and path.is_relative_to(inside):
        chain = [Path(inside), *(Path(inside) / part for part in _parts_between(Path(inside), path))]
    for folder in chain:
        refuse_symlink(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a folder")
    check_writable(path, flag)
    return path


def check_writable(folder: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse ``folder`` when it, or where it is missing the nearest folder above it (where it would be made),
    is not writable: said before any work, not after it."""
    folder = Path(folder)
    existing = next((p for p in [folder, *folder.absolute().parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == folder else f" (it would be made in {existing})"
        raise ValueError(f"{flag} {folder}: not writable{where}")


def _parts_between(top: Path, path: Path) -> list[Path]:
    """``a``, ``a/b``, ``a/b/c`` for ``top/a/b/c``."""
    parts = path.relative_to(top).parts
    return [Path(*parts[: i + 1]) for i in range(len(parts))]


def output_folder(path: str | os.PathLike, flag: str = "--out", inside: str | os.PathLike | None = None) -> Path:
    """``path`` as a folder to write into, made if missing, after ``check_output_folder``: never a symbolic
    link (ohem writes into folders it made or was given, never through a link to somewhere else)."""
    path = check_output_folder(path, flag, inside)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot make the folder: {e.strerror or e}") from None
    refuse_symlink(path)  # made by someone else as a link in the meantime
    return path


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr (rate and ETA), off where ``enabled`` is False or ``TQDM_DISABLE`` is set
    in the environment now: tqdm itself reads it only once, when it is first imported."""
    off = not enabled or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, disable=off)


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in lists and dicts too) made None: JSON's null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def strict_json(value: Any, indent: int | None = 2) -> str:
    """Standard JSON (no ``NaN`` / ``Infinity`` tokens: those become ``null``), newline-terminated."""
    return json.dumps(finite_or_none(value), indent=indent, allow_nan=False) + "\n"


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space and terminal escape
    codes (bold, colour) removed: a message that quotes a library's error stays one plain line."""
    return " ".join(_TERMINAL_CODES.sub("", text).split())


def is_int(value: object) -> bool:
    """An int but not a bool: a JSON number without a fraction."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float but not a bool: what JSON calls a number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_coco_bbox(value: object) -> bool:
    """A COCO ``bbox`` as JSON gives it: a list of four numbers ``[x, y, w, h]``."""
    return isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)


def xywh_to_xyxy(bbox: list[float]) -> list[float]:
    """One COCO ``[x, y, w, h]`` box as floats ``[x1, y1, x2, y2]`` (tensors of boxes: ``box_convert``)."""
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def finite_box_corners(bbox: object) -> list[float] | None:
    """``[x1, y1, x2, y2]`` of a COCO ``[x, y, w, h]`` (a list or tuple of four numbers) whose numbers
    and corners ``x + w``, ``y + h`` are all finite; None otherwise (an integer beyond float range too)."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        return None
    try:
        xyxy = xywh_to_xyxy(list(bbox))
        finite = all(math.isfinite(float(v)) for v in (*bbox, *xyxy))
    except OverflowError:
        return None
    return xyxy if finite else None


def json_type(value: object) -> str:
    """What JSON calls the type of a value ``json.load`` gave: object, list, string, number, ..."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def json_object(value: object, keys: Sequence[str], where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object holding every one of ``keys``, else a one-line error that
    starts with ``where``."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object with {', '.join(keys)}, got a JSON {json_type(value)}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(map(repr, missing))}")
    return value


# --------------------------------------------------------------------------------------------- optional extras
# The optional dependencies: import name -> (what it is, the pip extra that installs it).
EXTRAS = {
    "cv2": ("OpenCV contrib", "proposals"),
    "pycocotools": ("pycocotools", "coco"),
    "tensorboard": ("TensorBoard", "tensorboard"),
    "matplotlib": ("matplotlib", "plots"),
    "scipy": ("scipy", "mat"),
    "h5py": ("h5py", "mat"),
    "submitit": ("submitit", "slurm"),
    "ray": ("Ray", "ray"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def install_hint(module: str) -> str:
    """``pip install 'ohem[EXTRA]'`` for an optional module (``cv2``, ``scipy.io``, ...)."""
    return f"pip install 'ohem[{EXTRAS[module.split('.')[0]][1]}]'"


def has_module(module: str) -> bool:
    """Whether ``module`` can be imported (imports it)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(module: str, what: str) -> ModuleType:
    """``module`` imported, or ``MissingExtra``: ``WHAT needs PACKAGE: pip install 'ohem[EXTRA]'``. OpenCV
    must be the contrib build (``cv2.ximgproc``: selective search)."""
    name, extra = EXTRAS[module.split(".")[0]]
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs {name}: {install_hint(module)}") from None
    if module == "cv2" and not hasattr(imported, "ximgproc"):
        raise MissingExtra(f"{what} needs {name} (this OpenCV has no cv2.ximgproc): {install_hint(module)}")
    return imported


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _libc_prctl() -> Any:
    """libc's ``prctl`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def die_with_parent(parent: int | None = None, signal_number: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``signal_number`` to this process when the thread that started it ends
    (Linux; elsewhere nothing): a ``kill -9`` of a bench or a training run then takes its children
    with it. Call it in the child (``preexec_fn``, a loader's ``worker_init_fn``); ``parent``: the
    starter's pid, to catch a parent that died before the call (the child then exits at once)."""
    if _PRCTL is None:
        return
    _PRCTL(PR_SET_PDEATHSIG, int(signal_number), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read a MiB at a time."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
