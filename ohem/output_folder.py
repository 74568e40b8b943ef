"""A folder ohem writes into, held open: its writes go into the folder that was checked, and a folder
swapped for another (a symbolic link, or a new folder of the same name) while a command writes is refused.

``OutputFolder(path)`` opens ``path`` (already made and checked: ``ohem.util.output_folder``) with
``O_NOFOLLOW``, and remembers which folder it is (device and inode). Every write through it
(``open``: atomic, like ``ohem.util.atomic_open``; ``append``) first ``check``s that ``path`` still names
that folder (not a link, the same inode), then opens its file relative to the folder's descriptor
(``dir_fd``, ``O_NOFOLLOW``): even a swap between the check and the write cannot send it elsewhere.
Subfolders (``OUT/JPEGImages``, ``RUN/tb``) are held and checked the same way, each below its parent.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ohem.util import atomic_open_at, naming_disk_errors, open_append

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class FolderReplaced(ValueError):
    """The output folder is no longer the one ohem checked and writes into (one line: ``ohem CMD: error: ...``)."""


def _open_folder(name: str | Path, dir_fd: int | None, shown: Path) -> int:
    """A descriptor of the folder ``name`` (in ``dir_fd``), never through a symbolic link."""
    try:
        return os.open(name, FOLDER_FLAGS, dir_fd=dir_fd)
    except OSError as e:  # a link or a file, put there since it was checked
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise FolderReplaced(
                    f"{shown}: is a symbolic link; ohem does not write through links it did not make"
                ) from None
        raise FolderReplaced(f"{shown}: cannot be opened as a folder: {e.strerror or e}") from None


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


class OutputFolder:
    """``path``, a folder that exists and is not a symbolic link, held open for writing into."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.fd = _open_folder(self.path, None, self.path)
        self.identity = _identity(os.fstat(self.fd))
        # subfolders held, parents first: relative path -> (descriptor, identity)
        self.subfolders: dict[str, tuple[int, tuple[int, int]]] = {}

    def close(self) -> None:
        for fd, _ in self.subfolders.values():
            os.close(fd)
        self.subfolders.clear()
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> None:
        """Raise ``FolderReplaced`` unless ``path`` and each subfolder held still name the folders opened."""
        try:
            info: os.stat_result | None = os.lstat(self.path)
        except FileNotFoundError:
            info = None
        self._same(self.path, info, self.identity)
        for rel, (_, identity) in self.subfolders.items():
            try:  # relative to the folder held (the path may lead elsewhere by now)
                info = os.stat(rel, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                info = None
            self._same(self.path / rel, info, identity, rel)

    def _same(self, path: Path, info: os.stat_result | None, identity: tuple[int, int], rel: str = "") -> None:
        if info is not None and stat.S_ISDIR(info.st_mode) and _identity(info) == identity:
            return
        if info is None:
            now = "now missing"
        elif stat.S_ISLNK(info.st_mode):
            target = os.readlink(rel, dir_fd=self.fd) if rel else os.readlink(path)
            now = f"now a symbolic link to {target}"
        elif stat.S_ISDIR(info.st_mode):
            now = "now another folder"
        else:
            now = "now not a folder"
        raise FolderReplaced(f"{path}: the folder was replaced while ohem wrote into it ({now}); nothing more written")

    def subfolder(self, rel: str) -> int:
        """The descriptor of ``rel`` (``JPEGImages``, ``ImageSets/Main``), made where missing and held (a
        symbolic link there is refused), checked from now on with the folder."""
        self.check()
        fd = self.fd
        parts = Path(rel).parts
        for i in range(len(parts)):
            key = "/".join(parts[: i + 1])
            if key not in self.subfolders:
                with contextlib.suppress(FileExistsError), naming_disk_errors(self.path / key):
                    os.mkdir(parts[i], 0o777, dir_fd=fd)
                sub = _open_folder(parts[i], fd, self.path / key)
                self.subfolders[key] = (sub, _identity(os.fstat(sub)))
            fd = self.subfolders[key][0]
        return fd

    def _place(self, path: str | os.PathLike) -> tuple[int, str, Path]:
        """(descriptor of the folder to write in, file name, path to name) of ``path``, a file inside the
        folder (``OUT/NAME``, ``OUT/SUB/NAME``). Checks the folder first."""
        rel = Path(path).relative_to(self.path)  # ValueError: not inside (a bug of the caller)
        if str(rel.parent) == ".":
            self.check()
            return self.fd, rel.name, self.path / rel
        return self.subfolder(str(rel.parent)), rel.name, self.path / rel

    @contextlib.contextmanager
    def open(self, path: str | os.PathLike, binary: bool = False) -> Iterator[IO[Any]]:
        """``atomic_open`` of ``path`` (a file inside the folder), relative to the held folder."""
        fd, name, shown = self._place(path)
        with atomic_open_at(fd, name, shown, binary) as f:
            yield f

    def append(self, path: str | os.PathLike) -> IO[str]:
        """``open_append`` of ``path`` (a file inside the folder), relative to the held folder."""
        fd, name, shown = self._place(path)
        return open_append(shown, dir_fd=fd, name=name)
