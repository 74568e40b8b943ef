"""How much a ``.mat`` proposals file may make the importer allocate, read from its headers before any
array is loaded (docs/RELIABILITY.md, issue 22).

The limits are the proposal readers' own: ``data.max_proposal_boxes_per_image`` and
``data.max_proposal_boxes``. ``boxes`` may hold at most one cell per image of the split.

* MATLAB v7.3 (HDF5): every dataset's ``.shape`` is read before its data (h5py reads only the metadata).
* MATLAB v5/v7: ``scipy.io.whosmat`` gives the shape of ``boxes`` (its cell count) but not the shapes of
  the arrays inside its cells, and ``scipy.io.loadmat`` allocates what each inner header declares. So the
  cells' headers (class, flags, dims, and the byte count of their data) are walked here, the data skipped,
  with a ``zlib`` stream inflated in small pieces and never past the byte count its element declares: a
  few MB of compressed zeros cannot inflate to gigabytes, and a forged byte count is refused.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ohem.data.proposals import DEFAULT_MAX_BOXES, DEFAULT_MAX_BOXES_PER_IMAGE, MAX_META_BYTES

# MATLAB v5 data types and array classes (MAT-File Format, "Data Types", "MATLAB Array Flags")
MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 5, 6, 14, 15
NOT_NUMBERS = {1: "cell", 2: "struct", 3: "object", 5: "sparse", 16: "function handle", 17: "opaque"}
LOGICAL_FLAG, COMPLEX_FLAG = 1 << 9, 1 << 11
MAX_DIMS_BYTES = 4 * 64  # at most 64 dimensions
MAX_NAME_BYTES = 4096  # MATLAB's names have at most 63 characters
CHUNK = 1 << 20  # inflate at most this much at a time


@dataclass(frozen=True)
class BoxLimits:
    """The proposal limits (None: no limit) and the split the file must match (at most ``images`` cells)."""

    per_image: int | None = DEFAULT_MAX_BOXES_PER_IMAGE
    total: int | None = DEFAULT_MAX_BOXES
    images: int | None = None
    split: str = "given"


def cell_count_error(path: Path, cells: int, images: int, split: str) -> ValueError:
    return ValueError(
        f"{path}: 'boxes' holds {cells} arrays for the {images} images of the split {split} "
        f"(one file per split: voc_2007_trainval.mat is 2007:trainval)"
    )


def check_cell_count(path: Path, cells: int, limits: BoxLimits) -> None:
    """More cells than images: refused before the cells are read (fewer: the name checks say which image)."""
    if limits.images is not None and cells > limits.images:
        raise cell_count_error(path, cells, limits.images, limits.split)


def declared_boxes(path: Path, shape: tuple[int, ...], item: str, limits: BoxLimits) -> int:
    """The boxes an array of ``shape`` holds (4 numbers each); refused above ``data.max_proposal_boxes_per_image``."""
    boxes = math.ceil(math.prod(shape) / 4)
    if limits.per_image is not None and boxes > limits.per_image:
        raise ValueError(
            f"{path}: {item} declares an array of shape {tuple(shape)} ({boxes:,} boxes), more than "
            f"data.max_proposal_boxes_per_image = {limits.per_image:,} boxes (raise it, or null for no limit)"
        )
    return boxes


def check_total(path: Path, total: int, limits: BoxLimits) -> None:
    if limits.total is not None and total > limits.total:
        raise ValueError(
            f"{path}: 'boxes' declares {total:,} boxes in all, more than data.max_proposal_boxes = "
            f"{limits.total:,} (raise it, or null for no limit)"
        )


# --------------------------------------------------------------------------------------------- MATLAB v5
class _Element:
    """The bytes of one top-level v5 element, read in order; a compressed one is inflated piece by piece
    and refused once it inflates beyond the byte count it declares."""

    def __init__(self, path: Path, f: IO[bytes], nbytes: int, compressed: bool) -> None:
        self.path, self.f, self.left_in_file = path, f, nbytes
        self.inflate = zlib.decompressobj() if compressed else None
        self.buffer = b""
        self.inflated = 0
        self.limit: int | None = None  # inflated bytes allowed, once the inner tag has said

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._more()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            n -= len(self.read(min(n, CHUNK)))

    def _more(self) -> None:
        if self.inflate is None:
            raw = self.f.read(min(CHUNK, self.left_in_file))
            self.left_in_file -= len(raw)
            if not raw:
                raise ValueError(f"{self.path}: truncated (an element ends before its declared size)")
            self.buffer += raw
            return
        tail = self.inflate.unconsumed_tail
        raw = tail or self.f.read(min(CHUNK, self.left_in_file))
        if not tail:
            self.left_in_file -= len(raw)
        try:
            data = self.inflate.decompress(raw, CHUNK) if raw else b""
        except zlib.error as e:
            raise ValueError(f"{self.path}: a compressed variable does not inflate ({e})") from None
        if not data:
            raise ValueError(f"{self.path}: truncated (a compressed variable ends before its declared size)")
        self.inflated += len(data)
        self.buffer += data
        self._check_inflated()

    def declare(self, nbytes: int) -> None:
        """The inflated element is its 8-byte tag and the ``nbytes`` the tag declares: never more."""
        self.limit = 8 + nbytes
        self._check_inflated()

    def _check_inflated(self) -> None:
        if self.limit is not None and self.inflated > self.limit:
            raise ValueError(
                f"{self.path}: a compressed variable inflates beyond the {self.limit - 8:,} bytes it declares (forged)"
            )


def _tag(element: _Element, order: str) -> tuple[int, int, bytes]:
    """(data type, byte count, the data of a small element, else b"")."""
    raw = element.read(8)
    mdtype, nbytes = struct.unpack(order + "II", raw)
    if mdtype >> 16:  # small data element: its byte count and type share the first word, data the second
        return mdtype & 0xFFFF, mdtype >> 16, raw[4 : 4 + (mdtype >> 16)]
    return mdtype, nbytes, b""


def _padded(n: int) -> int:
    return n + (-n % 8)


@dataclass
class _Header:
    mclass: int
    flags: int
    dims: tuple[int, ...]
    name: str
    size: int  # bytes of the header (flags, dims, name)


def _matrix_header(path: Path, element: _Element, order: str) -> _Header:
    """Array flags, dimensions and name of a miMATRIX element (its tag already read)."""
    mdtype, nbytes, _ = _tag(element, order)
    if mdtype != MI_UINT32 or nbytes != 8:
        raise ValueError(f"{path}: not a MATLAB .mat file: an array without its flags")
    flags = struct.unpack(order + "II", element.read(8))[0]
    mdtype, nbytes, _ = _tag(element, order)  # at least two dimensions: never a small element
    if mdtype != MI_INT32 or not 8 <= nbytes <= MAX_DIMS_BYTES or nbytes % 4:
        raise ValueError(f"{path}: not a MATLAB .mat file: an array with {nbytes} bytes of dimensions")
    dims = struct.unpack(f"{order}{nbytes // 4}i", element.read(_padded(nbytes))[:nbytes])
    size = 16 + 8 + _padded(nbytes)
    _, name_bytes, name = _tag(element, order)
    if not name and name_bytes:
        if name_bytes > MAX_NAME_BYTES:
            raise ValueError(f"{path}: not a MATLAB .mat file: a variable name of {name_bytes:,} bytes")
        name = element.read(_padded(name_bytes))[:name_bytes]
        size += _padded(name_bytes)
    return _Header(flags & 0xFF, flags, tuple(dims), name.decode("latin-1"), size + 8)


def check_v5_boxes(path: Path, limits: BoxLimits) -> set[int]:
    """Walk the headers of every variable, and the cells of ``boxes`` (a cell array: its header gives the cell
    count), refusing what the limits refuse and any tag whose data type is not MATLAB's (scipy would crash on
    some: an unknown type in a cell's data is a segmentation fault); ``images`` may declare at most
    ``MAX_META_BYTES`` and is walked likewise. Runs before scipy reads anything. Returns the indices of the
    cells MATLAB marks logical (scipy loads them as uint8: the caller makes them bool)."""
    logical: set[int] = set()
    with path.open("rb") as f:
        order = "<" if f.read(128)[126:128] == b"IM" else ">"
        while len(tag := f.read(8)) == 8:
            mdtype, size_in_file = struct.unpack(order + "II", tag)
            start = f.tell()
            element = _Element(path, f, size_in_file, mdtype == MI_COMPRESSED)
            nbytes = size_in_file
            if mdtype == MI_COMPRESSED:
                mdtype, nbytes, _ = _tag(element, order)
                element.declare(nbytes)
            if mdtype != MI_MATRIX:
                raise ValueError(f"{path}: not a MATLAB .mat file: a variable of data type {mdtype} (not an array)")
            if nbytes:
                header = _matrix_header(path, element, order)
                if header.name == "images":
                    if nbytes > MAX_META_BYTES:
                        raise ValueError(
                            f"{path}: 'images' declares {nbytes:,} bytes, more than {MAX_META_BYTES:,} "
                            f"(the image names of a split take far less)"
                        )
                    _check_body(path, element, order, header, nbytes - header.size, "'images'")
                if header.name == "boxes" and header.mclass == 1:  # not a cell array: whosmat's check refuses it
                    cells = math.prod(header.dims)
                    check_cell_count(path, cells, limits)
                    logical = _check_cells(path, element, order, cells, limits)
            f.seek(start + size_in_file)
    return logical


V5_NUMBERS = {1, 2, 3, 4, 5, 6, 7, 9, 12, 13}  # miINT8 .. miUINT64 (8, 10 and 11 are reserved: no type)
V5_TEXT = {16, 17, 18}  # miUTF8, miUTF16, miUTF32


def _check_data_type(path: Path, mdtype: int, item: str) -> None:
    if mdtype not in V5_NUMBERS | V5_TEXT:
        raise ValueError(f"{path}: {item} holds data of type {mdtype}, not a MATLAB data type (forged)")


def _check_body(
    path: Path, element: _Element, order: str, header: _Header, left: int, item: str, depth: int = 0
) -> None:
    """The data elements of an array after its header (``left`` bytes), their types checked, their data
    skipped: a cell array's cells are arrays, walked in turn; numbers and chars are typed data."""
    if header.mclass in NOT_NUMBERS and header.mclass != 1:
        raise ValueError(f"{path}: {item} is a MATLAB {NOT_NUMBERS[header.mclass]} array, not names")
    if depth > 2:
        raise ValueError(f"{path}: {item} nests cell arrays more than 2 deep")
    while left >= 8:
        mdtype, nbytes, small = _tag(element, order)
        left -= 8
        if header.mclass == 1:
            if mdtype != MI_MATRIX:
                raise ValueError(f"{path}: {item} holds an element of data type {mdtype}, not an array (forged)")
            if nbytes:
                child = _matrix_header(path, element, order)
                _check_body(path, element, order, child, nbytes - child.size, item, depth + 1)
            left -= nbytes
            continue
        _check_data_type(path, mdtype, item)
        if not small:
            if _padded(nbytes) > left:
                raise ValueError(f"{path}: {item} claims {nbytes:,} bytes of data in {left:,} (forged)")
            element.skip(_padded(nbytes))
            left -= _padded(nbytes)
    element.skip(max(left, 0))


def _check_cells(path: Path, element: _Element, order: str, cells: int, limits: BoxLimits) -> set[int]:
    logical: set[int] = set()
    total = 0
    for i in range(cells):
        item = f"'boxes' cell {i + 1}"
        mdtype, nbytes, _ = _tag(element, order)
        if mdtype != MI_MATRIX:
            raise ValueError(f"{path}: {item} is not a MATLAB array (data type {mdtype})")
        if nbytes == 0:
            continue  # MATLAB's empty array: its tag alone
        header = _matrix_header(path, element, order)
        if header.mclass in NOT_NUMBERS:
            raise ValueError(f"{path}: {item} is a MATLAB {NOT_NUMBERS[header.mclass]} array, not numbers")
        if header.flags & COMPLEX_FLAG:
            raise ValueError(f"{path}: {item} holds complex numbers")
        total += declared_boxes(path, header.dims, item, limits)
        check_total(path, total, limits)
        data_bytes = nbytes - header.size
        numbers = math.prod(header.dims)
        if data_bytes > 8 + 8 * numbers:  # one tag, at most 8 bytes a number (complex is refused above)
            raise ValueError(f"{path}: {item} claims {nbytes:,} bytes for {numbers:,} numbers (forged)")
        if data_bytes >= 8:
            data_type, claimed, small = _tag(element, order)
            _check_data_type(path, data_type, item)
            data_bytes -= 8
            if not small and claimed > data_bytes:
                raise ValueError(f"{path}: {item} claims {claimed:,} bytes of data in {data_bytes:,} (forged)")
        element.skip(max(data_bytes, 0))
        if header.flags & LOGICAL_FLAG:
            logical.add(i)
    return logical


# --------------------------------------------------------------------------------------------- MATLAB v7.3
def check_hdf5_dataset(path: Path, dataset: Any, item: str, limits: BoxLimits) -> int:
    """The boxes an HDF5 dataset declares, from its shape and element type alone (its data is not read). An
    element must be one number: an HDF5 array type (a (1, 1) dataset whose element is 11000 x 11000 numbers)
    or a compound one is refused, so the bytes read follow the declared shape (at most 8 bytes a number)."""
    dtype = dataset.dtype
    if dtype.subdtype is not None or dtype.fields is not None or dtype.kind not in "biuf":
        raise ValueError(f"{path}: {item} holds HDF5 elements of type {dtype}, not single numbers")
    boxes = declared_boxes(path, tuple(dataset.shape), item, limits)
    if dtype.itemsize > 8:
        raise ValueError(f"{path}: {item} holds {dtype.itemsize}-byte numbers (at most 8)")
    return boxes


def check_hdf5_stored_here(path: Path, dataset: Any, item: str) -> None:
    """Refuse, before any read, a dataset whose data HDF5 would read from other files: external storage (raw
    data in any file it names) or a virtual dataset (a mapping of other files' datasets)."""
    if dataset.external:
        raise ValueError(f"{path}: {item} keeps its data in other files (HDF5 external storage); refused, not read")
    if dataset.is_virtual:
        raise ValueError(f"{path}: {item} is an HDF5 virtual dataset (its data maps other files); refused, not read")
