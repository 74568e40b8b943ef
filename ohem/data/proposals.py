"""Precomputed region proposals (Fast R-CNN's input): selective search, a pickle-free file format, a lazy reader.

File format ``ohem-proposals-1`` (full spec in ``docs/PROPOSALS.md``): a zip archive as written by
``numpy.savez_compressed`` (any ``.npz`` that ``numpy.load(..., allow_pickle=False)`` reads is accepted), with

* ``__format__``: a 0-d unicode array ``"ohem-proposals-1"`` that identifies the file;
* ``<key>``: float32 ``(n, 4)`` boxes ``x1, y1, x2, y2`` of one image, in the original image's pixels
  (0-based, ``x2 = x + w`` is exclusive), best first;
* ``<key>.scores`` (optional): float32 ``(n,)`` scores of those boxes;
* ``__meta__`` (optional): a 0-d unicode array holding a JSON object (how the boxes were made).

``<key>`` is the image name percent-encoded (``urllib.parse.quote`` with only ``A-Z a-z 0-9 - _ ~`` left as
they are, ``.`` also encoded, and a leading ``_`` encoded as ``%5F``), so any non-empty name works: names with
``/`` or ``.`` cannot clash with the ``.scores`` suffix, the ``.npy`` member suffix, or the reserved ``__*``
keys. Common names (VOC ``000001``, ``2008_000001``; COCO ids) are their own keys.

Reading is lazy: opening reads only the zip directory, the ``.npy`` header of every member (shape and dtype,
not the data) and ``__format__``; one image's arrays are read when asked for. The headers bound what reading
can allocate: an image claiming more than ``max_boxes_per_image`` boxes, a file claiming more than
``max_boxes`` in all (``data.max_proposal_boxes_per_image`` / ``data.max_proposal_boxes``), or a member
claiming more data than the archive holds is refused when the file is opened.
``ProposalFile.proposals_for(name, height, width)`` is the training-time accessor: it clips boxes to the image
and drops degenerate ones, so training is safe even without the full ``check_against``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import numpy as np
import torch
from torchvision.ops import box_convert, clip_boxes_to_image
from tqdm import tqdm

from ohem.config import DataConfig, check_choice
from ohem.util import atomic_open, one_line, output_folder, regular_file, require

FORMAT = "ohem-proposals-1"
PARTS_FORMAT = "ohem-proposals-parts-1"
SearchMode = Literal["fast", "quality"]  # OpenCV's two selective search strategies
SCORES_SUFFIX = ".scores"
DEFAULT_MAX_BOXES_PER_IMAGE: int | None = DataConfig.max_proposal_boxes_per_image
DEFAULT_MAX_BOXES: int | None = DataConfig.max_proposal_boxes
MAX_META_BYTES = 16 << 20  # __format__ / __meta__: a short string and a JSON object

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- names / keys
def name_to_key(name: str) -> str:
    """The archive key of an image name (see the module docstring); reversible with ``key_to_name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"image names must be non-empty strings, got {name!r}")
    key = quote(name, safe="-_~").replace(".", "%2E")
    return "%5F" + key[1:] if key.startswith("_") else key


def key_to_name(key: str) -> str:
    return unquote(key)


def _error_line(error: BaseException) -> str:
    """``"Type: message"`` of an exception, on one line."""
    return one_line(f"{type(error).__name__}: {error}")


# --------------------------------------------------------------------------------------------- writing
def _write_npz(path: Path, items: Iterable[tuple[str, np.ndarray]]) -> None:
    """Stream (key, array) pairs into a compressed npz without holding them all in memory."""
    with (
        atomic_open(path, binary=True, make_parents=True) as f,
        zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf,
    ):
        for key, array in items:
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _is_real(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)


def _proposal_arrays(name: str, boxes: Any, scores: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One image's boxes as a float32 (n, 4) array of finite numbers and its scores (or None) as
    float32 (n,); anything else is a one-line error naming the image. Boxes are not clipped here:
    a file holds them as they were made, ``clip_boxes`` fits them to an image when read."""
    b = np.asarray(boxes)
    if b.ndim != 2 or b.shape[1] != 4 or not _is_real(b):
        raise ValueError(f"boxes of image {name!r} must be a real (n, 4) array, got {b.dtype} {b.shape}")
    b = b.astype(np.float32)
    if not np.isfinite(b).all():
        raise ValueError(f"boxes of image {name!r} contain NaN or infinity")
    if scores is None:
        return b, None
    s = np.asarray(scores)
    if s.shape != (len(b),) or not _is_real(s):
        raise ValueError(f"scores of image {name!r} must be a real ({len(b)},) array, got {s.dtype} {s.shape}")
    return b, s.astype(np.float32)


def _items(
    boxes_by_name: Mapping[str, Any], scores_by_name: Mapping[str, Any] | None, meta: Mapping[str, Any] | None
) -> Iterator[tuple[str, np.ndarray]]:
    yield "__format__", np.array(FORMAT)
    if meta is not None:
        yield "__meta__", np.array(json.dumps(dict(meta), sort_keys=True))
    for name, boxes in boxes_by_name.items():
        b, s = _proposal_arrays(name, boxes, None if scores_by_name is None else scores_by_name.get(name))
        key = name_to_key(name)
        yield key, b
        if s is not None:
            yield key + SCORES_SUFFIX, s


def write_proposals(
    path: str | os.PathLike,
    boxes_by_name: Mapping[str, Any],
    scores_by_name: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write an ``ohem-proposals-1`` file atomically (temporary file + rename). Boxes: (n, 4) ``x1, y1, x2, y2``
    in original image pixels, stored as float32; scores (optional, per image): (n,); meta: JSON-able dict."""
    path = Path(path)
    if scores_by_name is not None and (extra := set(scores_by_name) - set(boxes_by_name)):
        raise ValueError(f"{path}: scores given for images without boxes, e.g. {sorted(extra)[:3]}")
    _write_npz(path, _items(boxes_by_name, scores_by_name, meta))
    return path


# --------------------------------------------------------------------------------------------- reading
@dataclass
class ProposalCheck:
    """What ``ProposalFile.check_against`` found (boxes are counted over the dataset's images only)."""

    images: int = 0
    boxes: int = 0  # kept after clipping and dropping
    clipped: int = 0  # boxes that reached outside their image and were clipped to it
    dropped: int = 0  # boxes with x2 <= x1 or y2 <= y1 after clipping, removed
    empty_images: list[str] = field(default_factory=list)  # images left with no boxes
    extra_names: int = 0  # images in the file but not in the dataset (allowed)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
    """Boxes clipped to a ``height`` x ``width`` image with degenerate ones (x2 <= x1 or y2 <= y1) dropped;
    also returns how many were clipped and how many dropped."""
    clipped = clip_boxes_to_image(boxes, (height, width))
    n_clipped = int((clipped != boxes).any(1).sum())
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped[keep], n_clipped, int((~keep).sum())


def image_size(dataset: Any, index: int) -> tuple[int, int]:
    """(height, width) of a dataset image: ``dataset.image_size`` when it has one, else by decoding it."""
    if hasattr(dataset, "image_size") and callable(dataset.image_size):
        h, w = dataset.image_size(index)
    else:
        h, w = dataset[index][0].shape[-2:]
    return int(h), int(w)


class ProposalFile:
    """Lazy reader of an ``ohem-proposals-1`` file. Picklable (each process reopens the file: a zip handle
    shared across a fork would interleave reads)."""

    def __init__(
        self,
        path: str | os.PathLike,
        max_boxes_per_image: int | None = DEFAULT_MAX_BOXES_PER_IMAGE,
        max_boxes: int | None = DEFAULT_MAX_BOXES,
    ) -> None:
        self.path = Path(path)
        self._npz: Any = None
        self._pid: int | None = None
        npz = self._archive()
        keys = list(_checked_headers(self.path, npz.zip, max_boxes_per_image, max_boxes))  # .npy members, in order
        if "__format__" not in keys:
            raise ValueError(f"proposals file {self.path}: no __format__ key, not an ohem proposals file")
        fmt = str(self._read("__format__", "__format__"))
        if fmt != FORMAT:
            raise ValueError(f"proposals file {self.path}: format {fmt!r} is not supported (expected {FORMAT!r})")
        self.meta: dict[str, Any] = self._meta() if "__meta__" in keys else {}
        self._keys = {key_to_name(k): k for k in keys if "." not in k and not k.startswith("__")}
        self._scored = {k[: -len(SCORES_SUFFIX)] for k in keys if k.endswith(SCORES_SUFFIX)}

    def _meta(self) -> dict[str, Any]:
        text = str(self._read("__meta__", "__meta__"))
        try:
            meta = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"proposals file {self.path}: __meta__ is not JSON ({one_line(str(e))[:200]})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"proposals file {self.path}: __meta__ is not a JSON object")
        return meta

    # The open archive, reopened in a new process (after fork or unpickling).
    def _archive(self) -> Any:
        if self._npz is not None and self._pid == os.getpid():
            return self._npz
        regular_file(self.path, "proposals file")
        try:
            npz = np.load(self.path, allow_pickle=False)
        except Exception as e:  # BadZipFile, pickled data, OSError: all mean "not a proposals file"
            raise ValueError(
                f"proposals file {self.path} is not a readable .npz (corrupt or truncated?): {_error_line(e)}"
            ) from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"proposals file {self.path} is a single .npy array, not an .npz archive")
        self._npz, self._pid = npz, os.getpid()
        return npz

    def _read(self, key: str, item: str) -> np.ndarray:
        try:
            return self._archive()[key]
        except (FileNotFoundError, KeyError):
            raise
        except Exception as e:
            raise ValueError(f"proposals file {self.path}: cannot read {item}: {_error_line(e)}") from None

    def close(self) -> None:
        if self._npz is not None and self._pid == os.getpid():
            self._npz.close()
        self._npz = None

    def __enter__(self) -> ProposalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_npz": None, "_pid": None}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __repr__(self) -> str:
        return f"ProposalFile({str(self.path)!r}, {len(self)} images)"

    def names(self) -> list[str]:
        return list(self._keys)

    def boxes(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stored float32 (n, 4) boxes of one image as they are (not clipped), and its scores or None."""
        key = self._keys.get(name)
        if key is None:
            raise ValueError(f"proposals file {self.path} has no boxes for image {name!r}")
        boxes = self._read(key, f"the boxes of image {name!r}")
        scores = self._read(key + SCORES_SUFFIX, f"the scores of image {name!r}") if key in self._scored else None
        try:
            b, s = _proposal_arrays(name, boxes, scores)
        except ValueError as e:
            raise ValueError(f"proposals file {self.path}: {e}") from None
        return torch.from_numpy(b), None if s is None else torch.from_numpy(s)

    def proposals_for(self, name: str, height: int, width: int) -> torch.Tensor:
        """Training-time accessor: float32 (n, 4) boxes of one image clipped to ``height`` x ``width``, degenerate
        ones dropped (may be empty: the training pipeline adds the ground-truth boxes anyway)."""
        return clip_boxes(self.boxes(name)[0], height, width)[0]

    def check_against(self, dataset: Any, allow_empty: bool = False) -> ProposalCheck:
        """Validate the whole file against a dataset (reads every image's boxes, not its pixels when the dataset
        has ``image_size``). Missing images are an error; boxes outside an image are clipped and counted;
        degenerate boxes are dropped and counted; an image left with no boxes is an error unless
        ``allow_empty`` (Fast R-CNN can still train on its ground-truth boxes)."""
        names = [dataset.image_name(i) for i in range(len(dataset))]
        missing = [n for n in names if n not in self._keys]
        if missing:
            raise ValueError(
                f"proposals file {self.path} lacks {len(missing)} of the dataset's {len(names)} images, "
                f"e.g. {', '.join(map(repr, missing[:5]))}"
            )
        report = ProposalCheck(images=len(names), extra_names=len(set(self._keys) - set(names)))
        for i, name in enumerate(names):
            kept, n_clipped, n_dropped = clip_boxes(self.boxes(name)[0], *image_size(dataset, i))
            report.boxes += len(kept)
            report.clipped += n_clipped
            report.dropped += n_dropped
            if not len(kept):
                report.empty_images.append(name)
        if report.empty_images and not allow_empty:
            raise ValueError(
                f"proposals file {self.path}: {len(report.empty_images)} images have no valid boxes, e.g. image "
                f"{report.empty_images[0]!r} (pass allow_empty=True to train them on ground-truth boxes only)"
            )
        if report.clipped or report.dropped or report.empty_images:
            log.warning(
                "proposals file %s: clipped %d boxes to their image, dropped %d degenerate boxes, %d empty images",
                self.path,
                report.clipped,
                report.dropped,
                len(report.empty_images),
            )
        return report


def _checked_headers(
    path: Path, zf: zipfile.ZipFile, max_per_image: int | None, max_total: int | None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of every ``.npy`` member, read from the headers alone; an error if a member
    claims more than the limits allow or more data than the archive holds for it."""
    headers, total = {}, 0
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue  # never read (numpy.load would hand it over as raw bytes)
        key = info.filename[: -len(".npy")]
        shape, dtype, header_bytes = _npy_header(path, zf, info)
        values = math.prod(shape)
        claimed = values * dtype.itemsize
        if key.startswith("__"):
            if claimed > MAX_META_BYTES:
                raise ValueError(f"proposals file {path}: {key} claims {claimed:,} bytes (at most {MAX_META_BYTES:,})")
        elif "." not in key or key.endswith(SCORES_SUFFIX):
            name = key_to_name(key.removesuffix(SCORES_SUFFIX))
            rows = shape[0] if shape else 1
            what = "scores" if key.endswith(SCORES_SUFFIX) else "boxes"
            too_many = rows > (max_per_image or 0) or values > 4 * (max_per_image or 0) or dtype.itemsize > 16
            if max_per_image is not None and too_many:
                raise ValueError(
                    f"proposals file {path}: image {name!r}: {what} claim an array of shape {shape} {dtype.str} "
                    f"({claimed:,} bytes), more than data.max_proposal_boxes_per_image = {max_per_image:,} boxes "
                    f"(raise it, or null for no limit)"
                )
            total += rows if what == "boxes" else 0
        else:
            continue  # a key the reader ignores (a dot that is not .scores): never read
        if claimed > info.file_size - header_bytes:
            raise ValueError(
                f"proposals file {path}: member {info.filename} claims {claimed:,} bytes of data but holds "
                f"{max(info.file_size - header_bytes, 0):,} (truncated or forged)"
            )
        headers[key] = (shape, dtype)
    if max_total is not None and total > max_total:
        raise ValueError(
            f"proposals file {path}: claims {total:,} boxes in all, more than data.max_proposal_boxes = "
            f"{max_total:,} (raise it, or null for no limit)"
        )
    return headers


def _npy_header(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of one ``.npy`` member, reading only its first bytes."""
    fmt = np.lib.format
    try:
        with zf.open(info) as member:
            version = fmt.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(member)
            else:
                shape, _, dtype = fmt._read_array_header(member, version)  # type: ignore[attr-defined]  # 3.0: no public reader
            return tuple(int(n) for n in shape), dtype, member.tell()
    except Exception as e:  # BadZipFile, a bad magic string or header, an unsupported version
        raise ValueError(
            f"proposals file {path}: member {info.filename} has no readable .npy header: {_error_line(e)}"
        ) from None


# --------------------------------------------------------------------------------------------- selective search
def _seed_c_rand(seed: int) -> None:
    """OpenCV's selective search ranks regions with C ``rand()``; seeding it per image makes the order (and so the
    ``max_boxes`` cut) reproducible however images are spread over processes. Best effort where libc is not found."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).srand(ctypes.c_uint(seed))


def require_selective_search() -> Any:
    """``cv2`` with its contrib modules, or a ``MissingExtra`` naming ``ohem[proposals]`` (slow import: only
    where proposals are computed)."""
    return require("cv2", "selective search")


def selective_search(
    image: torch.Tensor | np.ndarray, mode: SearchMode = "fast", max_boxes: int = 2000, min_size: int = 2, seed: int = 0
) -> np.ndarray:
    """Selective search boxes of one image (float (3, H, W) tensor in [0, 1], or uint8 (H, W, 3) RGB array):
    float32 (n, 4) ``x1, y1, x2, y2`` in selective search's ranking order, boxes with a side < ``min_size`` px and
    exact duplicates removed, then at most ``max_boxes`` kept."""
    cv2 = require_selective_search()

    check_choice("selective search mode", mode, SearchMode)
    if isinstance(image, torch.Tensor):
        rgb = image.detach().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    else:
        rgb = np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] not in (1, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"selective search needs a (3, H, W) float tensor or (H, W, 3) uint8 array, got {rgb.shape}")
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
    ss.switchToSelectiveSearchFast() if mode == "fast" else ss.switchToSelectiveSearchQuality()
    _seed_c_rand(seed)
    xywh = np.asarray(ss.process()).reshape(-1, 4)
    xywh = xywh[(xywh[:, 2] >= min_size) & (xywh[:, 3] >= min_size)]
    _, first = np.unique(xywh, axis=0, return_index=True)
    xywh = xywh[np.sort(first)][:max_boxes]  # duplicates out, ranking order kept
    return box_convert(torch.from_numpy(xywh.astype(np.float32)), "xywh", "xyxy").numpy()


# --------------------------------------------------------------------------------------------- parallel, resumable


def compute_proposals(
    dataset: Any,
    out_path: str | os.PathLike,
    mode: SearchMode = "fast",
    max_boxes: int = 2000,
    min_size: int = 2,
    workers: int = 1,
    resume: bool = True,
    chunk_size: int = 16,
    seed: int = 0,
) -> Path:
    """Selective search proposals of every image of ``dataset`` into an ``ohem-proposals-1`` file at ``out_path``.

    Runs ``workers`` processes (1: in this process) over chunks of ``chunk_size`` images. Each finished chunk is
    written atomically to ``<out_path>.parts/``; with ``resume`` a rerun skips finished chunks (the parts
    directory must come from the same settings and image list, else it is an error) and returns at once if
    ``out_path`` already holds this exact result. The final file is merged and written atomically, then the
    parts removed, so an interrupted run never leaves a truncated ``out_path``."""
    check_choice("selective search mode", mode, SearchMode)
    require_selective_search()  # before any part file is written
    if max_boxes < 1 or min_size < 0 or workers < 1 or chunk_size < 1:
        raise ValueError(
            f"need max_boxes >= 1, min_size >= 0, workers >= 1, chunk_size >= 1; "
            f"got {max_boxes}, {min_size}, {workers}, {chunk_size}"
        )
    out_path = Path(out_path)
    names = _unique_image_names(dataset)
    settings = {
        "method": "selective-search",
        "mode": mode,
        "max_boxes": max_boxes,
        "min_size": min_size,
        "seed": seed,
        "num_images": len(names),
        "names_sha1": hashlib.sha1("\n".join(names).encode()).hexdigest(),
    }
    if resume and _holds_result(out_path, settings):
        log.info("proposals file %s is already complete", out_path)
        return out_path
    parts = _parts_folder(out_path, {"format": PARTS_FORMAT, "chunk_size": chunk_size, **settings}, resume)
    chunks = [(s, min(s + chunk_size, len(names))) for s in range(0, len(names), chunk_size)]
    todo = [(s, e) for s, e in chunks if not _part_is_done(_part_path(parts, s, e), names[s:e])]
    done_images = len(names) - sum(e - s for s, e in todo)
    with tqdm(total=len(names), initial=done_images, desc=f"selective search ({mode})", unit="img") as bar:
        _run_chunks(dataset, todo, parts, settings, workers, bar)
    _write_npz(out_path, _merged_parts(parts, chunks, names, settings))
    shutil.rmtree(parts)
    return out_path


def _unique_image_names(dataset: Any) -> list[str]:
    """The dataset's image names, each one the format can store, none twice."""
    names = [dataset.image_name(i) for i in range(len(dataset))]
    for name in names:
        name_to_key(name)  # fails early on names the format cannot store
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ValueError(f"dataset image names must be unique; {dup!r} appears more than once")
    return names


def _holds_result(out_path: Path, settings: dict[str, Any]) -> bool:
    """Whether ``out_path`` is a complete proposals file made with exactly these settings."""
    if not out_path.is_file():
        return False
    with contextlib.suppress(ValueError, OSError), ProposalFile(out_path) as done:
        return done.meta == settings
    return False


def _parts_folder(out_path: Path, wanted: dict[str, Any], resume: bool) -> Path:
    """The folder of finished chunks, with a manifest of ``wanted`` settings: an unfinished run's
    folder when ``resume`` (an error if its settings differ), else a new one."""
    parts = out_path.with_name(out_path.name + ".parts")
    manifest = parts / "manifest.json"
    if parts.exists() and not resume:
        shutil.rmtree(parts)
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(
                f"{manifest}: not a JSON manifest ({one_line(str(e))[:200]}); delete {parts} or pass resume=False"
            ) from None
        if not isinstance(found, dict):
            raise ValueError(f"{manifest}: not a JSON object; delete {parts} or pass resume=False")
        if found != wanted:
            diff = sorted(k for k in wanted.keys() | found.keys() if wanted.get(k) != found.get(k))
            raise ValueError(
                f"{parts} holds an unfinished run with other settings ({', '.join(diff)}); "
                f"delete it or pass resume=False"
            )
    else:
        output_folder(parts, "proposals parts folder")
        with atomic_open(manifest, binary=True, make_parents=True) as f:
            f.write(json.dumps(wanted, sort_keys=True).encode())
    return parts


def _part_path(parts: Path, start: int, stop: int) -> Path:
    return parts / f"part-{start:08d}-{stop:08d}.npz"


def _part_is_done(path: Path, names: list[str]) -> bool:
    if not path.is_file():
        return False
    try:
        with ProposalFile(path) as part:
            return part.names() == names
    except (ValueError, OSError):
        return False  # unreadable part (e.g. disk trouble): recompute it


def _run_chunks(
    dataset: Any, todo: list[tuple[int, int]], parts: Path, settings: dict[str, Any], workers: int, bar: tqdm
) -> None:
    """Compute and write the part file of each ``(start, stop)`` chunk, in ``workers`` processes."""
    if workers == 1 or len(todo) <= 1:
        for s, e in todo:
            bar.update(_run_chunk(dataset, s, e, _part_path(parts, s, e), settings))
        return
    # spawn, not fork: a fork taken while OpenCV's (or torch's) thread pool is busy deadlocks the child.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        min(workers, len(todo)), mp_context=context, initializer=_init_worker, initargs=(dataset,)
    ) as pool:
        pending = {pool.submit(_run_chunk, None, s, e, _part_path(parts, s, e), settings) for s, e in todo}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    bar.update(future.result())  # re-raises a worker's error
        except BaseException:
            for future in pending:
                future.cancel()  # chunks already running still finish and keep their parts
            raise


_WORKER_DATASET: Any = None


def _init_worker(dataset: Any) -> None:
    cv2 = require_selective_search()

    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def _run_chunk(dataset: Any, start: int, stop: int, part: Path, settings: dict[str, Any]) -> int:
    """Compute images ``start:stop`` and write them as one part file (atomically)."""
    dataset = _WORKER_DATASET if dataset is None else dataset
    boxes = {}
    for i in range(start, stop):
        name = dataset.image_name(i)
        try:
            boxes[name] = selective_search(
                dataset[i][0], settings["mode"], settings["max_boxes"], settings["min_size"], settings["seed"]
            )
        except (ValueError, FileNotFoundError):
            raise  # bad input: its one-line message already names the file
        except Exception as e:
            raise RuntimeError(f"selective search failed on image {name!r} (index {i}): {_error_line(e)}") from e
    write_proposals(part, boxes)
    return stop - start


def _merged_parts(
    parts: Path, chunks: list[tuple[int, int]], names: list[str], settings: dict[str, Any]
) -> Iterator[tuple[str, np.ndarray]]:
    """The final file's (key, array) pairs: format, settings as meta, then every image's boxes."""
    yield "__format__", np.array(FORMAT)
    yield "__meta__", np.array(json.dumps(settings, sort_keys=True))
    for s, e in chunks:
        with ProposalFile(_part_path(parts, s, e)) as part:
            for name in names[s:e]:
                yield name_to_key(name), part.boxes(name)[0].numpy()
