"""Import the selective-search proposals released with Fast R-CNN (``selective_search_data/*.mat``).

Those files are what Fast R-CNN and the OHEM paper trained on. Each holds ``boxes``, a MATLAB cell array
with one ``k x 4`` array per image of the split, in the split's image order; its columns are
``y1, x1, y2, x2``, 1-based inclusive pixel indices. Some also hold ``images``, the image names (a cell
array of strings); when present they align the boxes with the split's images by name.

Conversion to the ``ohem-proposals-1`` format (``x1, y1, x2, y2``, 0-based, right/bottom edge
exclusive): pixel ``i`` (1-based) covers ``[i - 1, i)``, so a box covering pixels ``x1..x2`` becomes
``x1 - 1, y1 - 1, x2, y2`` (the same rule ``VOCDetection`` applies to the devkit's boxes; it equals Fast
R-CNN's ``raw[:, (1, 0, 3, 2)] - 1``, 0-based inclusive, with ``1`` added to its ``x2`` and ``y2``).
Its width is ``x2 - x1 + 1`` pixels in the file's terms. Then, per image, in the file's order (its rank):

* exact duplicates are removed, the first occurrence kept (Fast R-CNN's ``unique_boxes``);
* small boxes are removed: rule ``"fast-rcnn"`` (default: what the authors trained on) is py-faster-rcnn's
  ``filter_small_boxes`` as written, ``x2 - x1 >= min_size and y2 - y1 > min_size`` on its 0-based
  inclusive corners, i.e. width ``>= min_size + 1`` and height ``>= min_size + 2`` pixels; rule
  ``"min-size"`` keeps boxes with width and height ``>= min_size`` pixels (the rule of ``compute_proposals``).

The boxes are capped by the proposal readers' limits (``data.max_proposal_boxes_per_image``,
``data.max_proposal_boxes``), checked from the file's headers before any array is loaded
(``ohem.data.mat_headers``); boolean (MATLAB logical) arrays are refused. scipy (MATLAB v5/v7 files)
and h5py (v7.3, HDF5) are optional: ``pip install 'ohem[mat]'``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ohem.config import check_choice
from ohem.data.mat_headers import (
    BoxLimits,
    cell_count_error,
    check_cell_count,
    check_hdf5_dataset,
    check_hdf5_stored_here,
    check_total,
    check_v5_boxes,
)
from ohem.data.proposals import (
    DEFAULT_MAX_BOXES,
    DEFAULT_MAX_BOXES_PER_IMAGE,
    MAX_META_BYTES,
    _error_line,
    _unique_image_names,
    write_proposals,
)
from ohem.util import regular_file, require

SmallBoxRule = Literal["min-size", "fast-rcnn"]
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)  # where an HDF5 superblock may start (MATLAB v7.3: 512)

log = logging.getLogger(__name__)


@dataclass
class MatProposals:
    """What a .mat proposals file holds: per image, the raw ``k x 4`` array (``y1, x1, y2, x2``, 1-based) as
    MATLAB shows it, and the image names of ``images`` (None when the file has none)."""

    path: Path
    boxes: list[np.ndarray]
    names: list[str] | None


@dataclass
class MatImport:
    """What ``import_mat_proposals`` wrote and removed."""

    path: Path
    images: int = 0
    boxes: int = 0  # written
    duplicates: int = 0  # exact duplicates removed
    small: int = 0  # boxes removed as too small
    by_name: bool = False  # aligned by the file's ``images`` (else by the split's order)
    outside: int = 0  # boxes reaching outside their image (kept: readers clip them)
    outside_images: list[str] = field(default_factory=list)


def _require(module: str) -> Any:
    return require(module, "reading MATLAB .mat proposal files")


# --------------------------------------------------------------------------------------------- reading
def read_mat_proposals(path: str | os.PathLike, limits: BoxLimits | None = None) -> MatProposals:
    """The ``boxes`` (and ``images``, if any) of a MATLAB v5/v7 (scipy) or v7.3 (HDF5, h5py) file; arrays
    beyond ``limits`` (default: the proposal readers' default limits) are refused from their headers."""
    path = regular_file(path, "MATLAB proposals file")  # a FIFO or directory is refused unopened
    limits = limits or BoxLimits()
    if _is_hdf5(path):
        return _read_hdf5(path, limits)
    return _read_v5(path, limits)


def _is_hdf5(path: Path) -> bool:
    with path.open("rb") as f:
        for offset in _HDF5_OFFSETS:
            f.seek(offset)
            if f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
    return False


def _read_v5(path: Path, limits: BoxLimits) -> MatProposals:
    sio = _require("scipy.io")
    try:
        version = sio.matlab.matfile_version(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a MATLAB .mat file (v5, v7 or v7.3): {_error_line(e)}") from None
    if version[0] != 1:  # (0, 0): v4, or any binary file starting with a zero byte
        raise ValueError(f"{path}: not a MATLAB .mat file (v5, v7 or v7.3): no v5 header, no HDF5 signature")
    logical = check_v5_boxes(path, limits)  # every header and the cells' tags, before scipy reads any
    try:
        variables = {name: (tuple(shape), cls) for name, shape, cls in sio.whosmat(str(path))}
    except Exception as e:
        raise ValueError(f"{path}: cannot read the MATLAB file: {_error_line(e)}") from None
    if "boxes" not in variables:
        raise ValueError(f"{path}: no 'boxes' variable (the file holds: {', '.join(sorted(variables)) or 'nothing'})")
    shape, matlab_class = variables["boxes"]
    if matlab_class != "cell" or len(shape) != 2 or min(shape) > 1:  # refused from the header: nothing loaded
        raise ValueError(
            f"{path}: 'boxes' must be a 1 x N or N x 1 cell array (one k x 4 array per image), "
            f"got a {matlab_class} array of shape {shape}"
        )
    try:
        data = sio.loadmat(str(path), variable_names=[v for v in ("boxes", "images") if v in variables])
    except Exception as e:
        raise ValueError(f"{path}: cannot read the MATLAB file: {_error_line(e)}") from None
    arrays = [np.asarray(c) for c in np.asarray(data["boxes"]).ravel()]
    for i in logical:  # scipy loads MATLAB's logicals as uint8: as bools they are refused as not numbers
        arrays[i] = arrays[i].astype(bool)
    names = _v5_names(path, data["images"]) if "images" in data else None
    return MatProposals(path, arrays, names)


def _v5_names(path: Path, images: Any) -> list[str]:
    """Names from a cell array of strings, or from a char matrix (one row per name, padded with spaces)."""
    a = np.asarray(images)
    if a.dtype.kind == "U":
        return [str(s).rstrip() for s in a.ravel()]
    if a.dtype != object or a.ndim != 2 or min(a.shape) > 1:
        raise ValueError(f"{path}: 'images' must be a cell array of strings, got a {a.dtype} array of shape {a.shape}")
    names = []
    for i, cell in enumerate(a.ravel()):
        c = np.asarray(cell)
        if c.dtype.kind != "U" or c.size > 1:
            raise ValueError(f"{path}: 'images' cell {i + 1} is not a string (a {c.dtype} array of shape {c.shape})")
        names.append(str(c.item()) if c.size else "")
    return names


def _read_hdf5(path: Path, limits: BoxLimits) -> MatProposals:
    h5py = _require("h5py")
    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise ValueError(f"{path}: not a readable HDF5 (MATLAB v7.3) file: {_error_line(e)}") from None
    with f:
        if "boxes" not in f:
            held = ", ".join(sorted(k for k in f if not k.startswith("#"))) or "nothing"
            raise ValueError(f"{path}: no 'boxes' variable (the file holds: {held})")
        refs = _hdf5_cells(path, f, "boxes", lambda n: check_cell_count(path, n, limits))
        targets = [_hdf5_target(path, f, ref, f"'boxes' cell {i + 1}") for i, ref in enumerate(refs)]
        total = 0
        for i, target in enumerate(targets):  # every shape checked before any array is read
            if not target.attrs.get("MATLAB_empty", 0):
                total += check_hdf5_dataset(path, target, f"'boxes' cell {i + 1}", limits)
                check_total(path, total, limits)
        arrays = [_hdf5_array(target) for target in targets]
        names = None
        if "images" in f:
            names = _hdf5_names(path, f, limits)
    return MatProposals(path, _matlab_orientation(path, arrays), names)


def _hdf5_cells(path: Path, f: Any, variable: str, max_cells: Callable[[int], None]) -> list[Any]:
    """The object references of a MATLAB cell array stored in HDF5 (a 1 x N or N x 1 dataset of references);
    ``max_cells(N)`` refuses too many cells before the references are read."""
    import h5py

    cells = _hdf5_variable(path, f, variable)
    if not isinstance(cells, h5py.Dataset) or h5py.check_dtype(ref=cells.dtype) is not h5py.Reference:
        raise ValueError(f"{path}: '{variable}' must be a cell array (a dataset of object references)")
    if len(cells.shape) != 2 or min(cells.shape) > 1:
        raise ValueError(f"{path}: '{variable}' must be a 1 x N or N x 1 cell array, got shape {cells.shape[::-1]}")
    max_cells(math.prod(cells.shape))
    check_hdf5_stored_here(path, cells, f"'{variable}'")
    return list(cells[()].ravel())


def _hdf5_variable(path: Path, f: Any, name: str) -> Any:
    """The file's variable ``name``, refused when it is a link to another file (an external link opens any
    path) or a link that does not resolve (a soft-link loop)."""
    import h5py

    try:
        link = f.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise ValueError(f"{path}: '{name}' is an HDF5 external link to {link.filename}; refused, not followed")
        return f[name]
    except (KeyError, RuntimeError, OSError) as e:  # a soft-link loop, a dangling link
        raise ValueError(
            f"{path}: '{name}' cannot be opened (an HDF5 link loop or a dangling link?): {_error_line(e)}"
        ) from None


def _hdf5_target(path: Path, f: Any, ref: Any, item: str) -> Any:
    """The dataset a cell refers to (its data not read)."""
    import h5py

    try:
        target = f[ref]
    except Exception as e:
        raise ValueError(f"{path}: {item} holds a broken reference: {_error_line(e)}") from None
    if not isinstance(target, h5py.Dataset):
        raise ValueError(f"{path}: {item} is not an array (a MATLAB struct or group?)")
    check_hdf5_stored_here(path, target, item)
    return target


def _hdf5_array(target: Any) -> np.ndarray:
    """The array of a cell's dataset, as h5py reads it (transposed relative to MATLAB). MATLAB's empty arrays
    (stored as their dimensions, marked ``MATLAB_empty``) come back as (0, 0); its chars (stored as UTF-16
    codes) as one-character strings and its logicals (and any HDF5 boolean) as bools, so that neither passes
    for numbers."""
    if target.attrs.get("MATLAB_empty", 0):
        return np.zeros((0, 0))
    array = np.asarray(target[()])
    matlab_class = target.attrs.get("MATLAB_class", b"")
    matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
    if matlab_class == "char":
        return np.array([chr(c) for c in array.ravel()], dtype="U1").reshape(array.shape)
    if matlab_class == "logical" or array.dtype.kind == "b":
        return array.astype(bool)
    return array


def _matlab_orientation(path: Path, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """MATLAB writes every array transposed (a k x 4 array as a (4, k) HDF5 dataset), so its arrays are
    transposed back. A file from another writer may hold (k, 4) datasets instead: the layout is decided per
    file from the arrays whose shape tells (k != 4), MATLAB's when none does."""
    wide = any(a.ndim == 2 and a.shape[0] == 4 and a.shape[1] != 4 for a in arrays)
    tall = any(a.ndim == 2 and a.shape[1] == 4 and a.shape[0] != 4 for a in arrays)
    if wide and tall:
        raise ValueError(f"{path}: 'boxes' mixes (4, k) and (k, 4) arrays; expected MATLAB's layout throughout")
    return arrays if tall else [a.T for a in arrays]


def _hdf5_names(path: Path, f: Any, limits: BoxLimits) -> list[str]:
    """Names from ``images``: a cell array of char arrays, or a char matrix (MATLAB chars are UTF-16 codes).
    Together they may declare at most ``MAX_META_BYTES`` (checked from the shapes before reading)."""
    import h5py

    images = _hdf5_variable(path, f, "images")
    if isinstance(images, h5py.Dataset) and images.attrs.get("MATLAB_class", b"") in (b"char", "char"):
        check_hdf5_stored_here(path, images, "'images'")
        _check_names_size(path, images.size * images.dtype.itemsize)
        codes = np.asarray(images[()])  # (L, N) in HDF5: MATLAB's N x L transposed
        return [_decode_chars(row).rstrip() for row in np.atleast_2d(codes).T]
    refs = _hdf5_cells(path, f, "images", lambda n: _check_names_size(path, 8 * n))
    targets = [_hdf5_target(path, f, ref, f"'images' cell {i + 1}") for i, ref in enumerate(refs)]
    _check_names_size(path, sum(t.size * t.dtype.itemsize for t in targets))
    names = []
    for i, target in enumerate(targets):
        chars = _hdf5_array(target)
        if chars.dtype.kind == "U" or not chars.size:
            names.append("".join(chars.ravel().tolist()))
        elif chars.dtype.kind in "iu":  # char codes written without MATLAB's attributes
            names.append(_decode_chars(chars))
        else:
            raise ValueError(f"{path}: 'images' cell {i + 1} is not a string (a {chars.dtype} array)")
    return names


def _check_names_size(path: Path, nbytes: int) -> None:
    if nbytes > MAX_META_BYTES:
        raise ValueError(
            f"{path}: 'images' declares {nbytes:,} bytes, more than {MAX_META_BYTES:,} "
            f"(the image names of a split take far less)"
        )


def _decode_chars(codes: np.ndarray) -> str:
    return np.asarray(codes).astype("<u2").ravel().tobytes().decode("utf-16-le", errors="replace")


# --------------------------------------------------------------------------------------------- converting
def convert_mat_boxes(
    raw: Any, min_size: float = 2, rule: SmallBoxRule = "fast-rcnn", item: str = "boxes"
) -> tuple[np.ndarray, int, int]:
    """One image's boxes of a .mat file (``k x 4``: ``y1, x1, y2, x2``, 1-based inclusive pixel indices) in the
    ``ohem-proposals-1`` convention, ``x1 - 1, y1 - 1, x2, y2``, float32, in the file's order; exact duplicates
    (all but the first) and small boxes (see the module docstring) removed. Also returns how many of each were
    removed. A malformed array is a one-line error naming ``item``."""
    b = np.asarray(raw)
    if b.size == 0 and b.ndim <= 2:
        return np.zeros((0, 4), np.float32), 0, 0  # MATLAB's [] (0 x 0) or a 0 x 4 array
    if b.dtype.kind not in "iuf":
        raise ValueError(f"{item}: expected numbers, got {b.dtype} values")
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{item}: expected a k x 4 array (y1, x1, y2, x2), got shape {b.shape}")
    b = b.astype(np.float64)
    if not np.isfinite(b).all():
        row = int(np.flatnonzero(~np.isfinite(b).all(1))[0])
        raise ValueError(f"{item}: row {row + 1} holds NaN or infinity")
    xyxy = np.stack([b[:, 1] - 1, b[:, 0] - 1, b[:, 3], b[:, 2]], axis=1)
    bad = (xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{item}: row {row + 1} (y1, x1, y2, x2) = {b[row].tolist()} ends before it starts "
            f"(x2 < x1 - 1 or y2 < y1 - 1; as x1 - 1, y1 - 1, x2, y2: {xyxy[row].tolist()})"
        )
    _, first = np.unique(xyxy, axis=0, return_index=True)
    unique = xyxy[np.sort(first)]
    w, h = unique[:, 2] - unique[:, 0], unique[:, 3] - unique[:, 1]
    if rule == "min-size":
        keep = (w >= min_size) & (h >= min_size)
    else:  # py-faster-rcnn's filter_small_boxes on 0-based inclusive corners, whose x2 - x1 is w - 1
        keep = (w - 1 >= min_size) & (h - 1 > min_size)
    return unique[keep].astype(np.float32), len(xyxy) - len(unique), int((~keep).sum())


def _file_order(mat: MatProposals, names: list[str], split: str) -> tuple[list[int], bool]:
    """For each image of the split, the index of its boxes in the file: by the file's ``images`` when it
    has them (every name must be one of the split's), else the split's own order."""
    path, n = mat.path, len(mat.boxes)
    if mat.names is not None:
        if len(mat.names) != n:
            raise ValueError(f"{path}: 'images' holds {len(mat.names)} names but 'boxes' holds {n} arrays")
        position: dict[str, int] = {}
        in_split = set(names)
        for i, name in enumerate(mat.names):
            if name in position:
                raise ValueError(
                    f"{path}: image {name!r} appears twice in 'images' (cells {position[name] + 1}, {i + 1})"
                )
            if name not in in_split:
                raise ValueError(
                    f"{path}: image {name!r} ('images' cell {i + 1}) is not in the split {split} "
                    f"(a file made for another split?)"
                )
            position[name] = i
        if n != len(names):
            missing = next(name for name in names if name not in position)
            raise ValueError(
                f"{path}: 'boxes' holds {n} arrays for the {len(names)} images of the split {split}; "
                f"e.g. image {missing!r} is not in the file's 'images'"
            )
        return [position[name] for name in names], True
    if n != len(names):
        raise cell_count_error(path, n, len(names), split)
    return list(range(n)), False


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def import_mat_proposals(
    mat_path: str | os.PathLike,
    dataset: Any,
    out_path: str | os.PathLike,
    min_size: float = 2,
    rule: SmallBoxRule = "fast-rcnn",
    max_boxes_per_image: int | None = DEFAULT_MAX_BOXES_PER_IMAGE,
    max_boxes: int | None = DEFAULT_MAX_BOXES,
) -> MatImport:
    """Convert a Fast R-CNN selective-search ``.mat`` file into an ``ohem-proposals-1`` file at ``out_path``, one
    entry per image of ``dataset`` (in its order). See the module docstring for the conversion and the filtering.
    Boxes reaching outside their image (when the dataset knows its image sizes) are kept, counted and logged.
    ``max_boxes_per_image`` / ``max_boxes``: the proposal readers' limits (None: no limit), checked from the
    file's headers before any array is loaded."""
    check_choice("small-box rule", rule, SmallBoxRule)
    if not min_size >= 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    mat_path = Path(mat_path)
    names = _unique_image_names(dataset)
    split = str(getattr(dataset, "split", "")) or "given"
    limits = BoxLimits(max_boxes_per_image, max_boxes, images=len(names), split=split)
    mat = read_mat_proposals(mat_path, limits)
    order, by_name = _file_order(mat, names, split)
    report = MatImport(Path(out_path), images=len(names), by_name=by_name)
    sized = callable(getattr(dataset, "image_size", None))
    boxes_by_name = {}
    for index, (name, i) in enumerate(zip(names, order)):
        item = f"{mat_path}: boxes of image {name!r} ('boxes' cell {i + 1} of {len(order)})"
        boxes, duplicates, small = convert_mat_boxes(mat.boxes[i], min_size, rule, item)
        boxes_by_name[name] = boxes
        report.boxes += len(boxes)
        report.duplicates += duplicates
        report.small += small
        if sized and len(boxes):
            h, w = dataset.image_size(index)
            outside = int(((boxes[:, :2] < 0).any(1) | (boxes[:, 2] > w) | (boxes[:, 3] > h)).sum())
            report.outside += outside
            if outside:
                report.outside_images.append(name)
    meta = {
        "method": "selective-search-mat",
        "source": mat_path.name,
        "source_sha1": _sha1(mat_path),
        "min_size": min_size,
        "small_boxes": rule,
        "by_name": by_name,
        "num_images": len(names),
        "names_sha1": hashlib.sha1("\n".join(names).encode()).hexdigest(),
    }
    write_proposals(out_path, boxes_by_name, meta=meta)
    if report.outside:
        log.warning(
            "%s: %d boxes of %d images reach outside their image (e.g. image %r); kept, readers clip them. "
            "Many such images suggest a file made for another split or image order.",
            mat_path,
            report.outside,
            len(report.outside_images),
            report.outside_images[0],
        )
    return report
