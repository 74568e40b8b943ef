"""Importing Fast R-CNN's selective-search .mat files (MATLAB v5 via scipy, v7.3 via h5py)."""

import sys

import numpy as np
import pytest

from ohem.cli import main
from ohem.data.export import export_synthetic
from ohem.data.mat_proposals import convert_mat_boxes, import_mat_proposals, read_mat_proposals
from ohem.data.proposals import ProposalFile
from ohem.data.synthetic import SyntheticShapes
from ohem.data.voc import VOCDetection
from tests.test_proposals import all_boxes, one_line_error

h5py = pytest.importorskip("h5py")  # the ``mat`` extra (pip install 'ohem[mat]'): skipped without it
scipy_io = pytest.importorskip("scipy.io")

NUM = 4
SIZE = 128


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """The synthetic train split exported in the VOC layout (4 images of 128 x 128)."""
    synthetic = SyntheticShapes("train", num_images=NUM, image_size=SIZE)
    tree = tmp_path_factory.mktemp("voc") / "tree"
    export_synthetic(synthetic, tree, "voc")
    return VOCDetection(tree, "train", classes=synthetic.classes, keep_difficult=True, empty_images="keep")


def names(dataset):
    return [dataset.image_name(i) for i in range(len(dataset))]


def cells(arrays, column=False):
    """A MATLAB cell array (1 x N, or N x 1) as scipy_io.savemat writes it."""
    out = np.empty((len(arrays), 1) if column else (1, len(arrays)), dtype=object)
    for i, a in enumerate(arrays):
        out.flat[i] = a
    return out


def save_v5(path, boxes, images=None, **more):
    data = {"boxes": cells([np.asarray(b, dtype=float) for b in boxes]), **more}
    if images is not None:
        data["images"] = cells(images, column=True)
    scipy_io.savemat(path, data)
    return path


def save_v73(path, boxes, images=None, layout="matlab"):
    """A MATLAB v7.3 file as MATLAB writes it: a 512-byte userblock with MATLAB's header, cells as datasets of
    object references to ``#refs#``, every array transposed (k x 4 stored as (4, k)), [] as its dimensions
    marked MATLAB_empty, chars as uint16 codes. ``layout="rows"``: (k, 4) datasets, as another writer might."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")

        def array(name, data, matlab_class):
            data = np.asarray(data)
            if data.size == 0:
                ds = refs.create_dataset(name, data=np.array(data.shape[::-1], dtype=np.uint64))
                ds.attrs["MATLAB_empty"] = np.uint8(1)
            else:
                ds = refs.create_dataset(name, data=data.T if layout == "matlab" else data)
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            return ds.ref

        def cell(variable, refs_):
            ds = f.create_dataset(variable, data=np.array(refs_, dtype=h5py.ref_dtype).reshape(-1, 1))
            ds.attrs["MATLAB_class"] = np.bytes_("cell")

        cell("boxes", [array(f"b{i}", np.asarray(b, dtype=float), "double") for i, b in enumerate(boxes)])
        if images is not None:
            codes = [np.array([[ord(c) for c in name]], dtype=np.uint16) for name in images]
            cell("images", [array(f"n{i}", c, "char") for i, c in enumerate(codes)])
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM")
    return path


# --------------------------------------------------------------------------------------------- conversion
def test_conversion_is_x1_minus_1_y1_minus_1_x2_y2():
    raw = np.array([[5, 10, 20, 30], [1, 1, 128, 128], [7, 3, 7, 4], [2, 2, 9, 3]])  # y1, x1, y2, x2, 1-based
    boxes, duplicates, small = convert_mat_boxes(raw, min_size=1, rule="min-size")
    assert boxes.dtype == np.float32
    # pixels 10..30 (21 px) -> [9, 30); pixels 1..128 (the whole 128 px image) -> [0, 128); file order kept
    assert boxes.tolist() == [[9, 4, 30, 20], [0, 0, 128, 128], [2, 6, 4, 7], [1, 1, 3, 9]]
    assert (duplicates, small) == (0, 0)
    assert (boxes[:, 2] - boxes[:, 0]).tolist() == [21, 128, 2, 2]  # width = x2 - x1 + 1 of the file's values


def test_duplicates_removed_first_occurrence_kept_in_order():
    a, b, c = [1, 1, 10, 10], [3, 2, 30, 20], [5, 5, 6, 9]
    boxes, duplicates, small = convert_mat_boxes(np.array([b, a, b, c, a, a]), rule="min-size")
    assert boxes.tolist() == [[1, 2, 20, 30], [0, 0, 10, 10], [4, 4, 9, 6]]
    assert (duplicates, small) == (3, 0)


def test_small_boxes_dropped_exactly_at_the_threshold():
    raw = np.array(
        [
            [1, 1, 10, 1],  # 1 px wide: dropped
            [1, 1, 10, 2],  # 2 px wide: kept
            [1, 1, 1, 10],  # 1 px high: dropped
            [1, 1, 2, 10],  # 2 px high: kept
            [4, 4, 4, 4],  # 1 x 1 px: dropped
            [1, 1, 3, 3],  # 3 x 3 px: kept
            [1, 1, 4, 3],  # 3 px wide, 4 px high: kept
            [2, 3, 5, 2],  # x2 = x1 - 1 in the file: 0 px wide, dropped
        ]
    )
    boxes, _, small = convert_mat_boxes(raw, rule="min-size")  # width and height >= 2 px
    assert boxes.tolist() == [[0, 0, 2, 10], [0, 0, 10, 2], [0, 0, 3, 3], [0, 0, 3, 4]]
    assert small == 4
    boxes, _, small = convert_mat_boxes(raw, min_size=3, rule="min-size")
    assert boxes.tolist() == [[0, 0, 3, 3], [0, 0, 3, 4]] and small == 6
    # the default, py-faster-rcnn's filter_small_boxes(min_size=2) on its 0-based inclusive boxes:
    # w >= 2 and h > 2, so 3 px wide and 4 px high at least
    boxes, _, small = convert_mat_boxes(raw)
    assert boxes.tolist() == [[0, 0, 3, 4]] and small == 7


def test_fast_rcnn_rule_matches_py_faster_rcnn():
    """The rule, against py-faster-rcnn's own code (transcribed) on random boxes."""
    rng = np.random.default_rng(0)
    y1x1 = rng.integers(1, 50, (500, 2))
    raw = np.concatenate([y1x1, y1x1 + rng.integers(-1, 6, (500, 2))], 1)
    raw = np.concatenate([raw, raw[:50]])  # some duplicates
    ours, _, _ = convert_mat_boxes(raw, rule="fast-rcnn")
    theirs = raw[:, (1, 0, 3, 2)] - 1.0  # pascal_voc._load_selective_search_roidb
    hashes = np.round(theirs).dot(np.array([1, 1e3, 1e6, 1e9]))  # ds_utils.unique_boxes
    theirs = theirs[np.sort(np.unique(hashes, return_index=True)[1])]
    w, h = theirs[:, 2] - theirs[:, 0], theirs[:, 3] - theirs[:, 1]  # ds_utils.filter_small_boxes
    theirs = theirs[(w >= 2) & (h > 2)]
    theirs[:, 2:] += 1  # their inclusive x2, y2 -> our exclusive ones
    np.testing.assert_array_equal(ours, theirs)


def test_empty_and_integer_arrays():
    for empty in (np.zeros((0, 4)), np.zeros((0, 0)), np.zeros((4, 0))):
        boxes, duplicates, small = convert_mat_boxes(empty)
        assert boxes.shape == (0, 4) and boxes.dtype == np.float32 and (duplicates, small) == (0, 0)
    boxes, _, _ = convert_mat_boxes(np.array([[5, 10, 20, 30]], dtype=np.uint16))
    assert boxes.tolist() == [[9, 4, 30, 20]]


# --------------------------------------------------------------------------------------------- files
def random_boxes(seed, counts):
    rng = np.random.default_rng(seed)
    out = []
    for k in counts:
        y1x1 = rng.integers(1, 100, (k, 2))
        b = np.concatenate([y1x1, y1x1 + rng.integers(1, 28, (k, 2))], 1)  # 2 to 28 px: none small
        if k > 2:
            b[-1] = b[0]  # a duplicate
        out.append(b)
    return out


def test_v5_and_v73_files_give_identical_results(voc, tmp_path):
    raw = random_boxes(1, [50, 0, 4, 7])  # an image with no boxes; one with exactly 4 (a square (4, 4) array)
    files = {
        "v5": save_v5(tmp_path / "a.mat", raw),
        "v5-named": save_v5(tmp_path / "b.mat", raw, images=names(voc)),
        "v73": save_v73(tmp_path / "c.mat", raw),
        "v73-named": save_v73(tmp_path / "d.mat", raw, images=names(voc)),
        "v73-rows": save_v73(tmp_path / "e.mat", raw, layout="rows"),
    }
    results = {}
    for label, mat in files.items():
        report = import_mat_proposals(mat, voc, tmp_path / f"{label}.npz")
        assert report.by_name == label.endswith("named")
        results[label] = all_boxes(report.path)
    expected = {name: convert_mat_boxes(b)[0] for name, b in zip(names(voc), raw)}
    # the duplicate of row 0 removed, and (default rule, the authors') boxes under 3 px wide or 4 px high
    assert [len(b) for b in expected.values()] == [42, 0, 3, 5]
    for label, result in results.items():
        assert list(result) == names(voc), label
        for name in names(voc):
            np.testing.assert_array_equal(result[name], expected[name], err_msg=label)


def test_v73_reads_as_matlab_holds_it(tmp_path):
    raw = [np.array([[5, 10, 20, 30], [1, 2, 3, 4]]), np.zeros((0, 4))]
    mat = read_mat_proposals(save_v73(tmp_path / "a.mat", raw, images=["000005", "x_1"]))
    assert mat.names == ["000005", "x_1"]
    assert mat.boxes[0].tolist() == raw[0].tolist() and mat.boxes[1].size == 0
    with h5py.File(tmp_path / "a.mat", "r") as f:
        assert f[f["boxes"][0, 0]].shape == (4, 2)  # really stored transposed, as MATLAB does


def test_image_names_align_the_boxes(voc, tmp_path):
    raw = random_boxes(2, [5, 6, 7, 8])
    order = [2, 0, 3, 1]  # the file lists the images in another order
    mat = save_v5(tmp_path / "a.mat", [raw[i] for i in order], images=[names(voc)[i] for i in order])
    report = import_mat_proposals(mat, voc, tmp_path / "a.npz")
    assert report.by_name and report.images == NUM and report.duplicates == 4
    result = all_boxes(report.path)
    assert list(result) == names(voc)  # the split's order
    for name, b in zip(names(voc), raw):
        np.testing.assert_array_equal(result[name], convert_mat_boxes(b)[0])


def test_char_matrix_names_and_column_cells(voc, tmp_path):
    raw = random_boxes(3, [3, 3, 3, 3])
    char_matrix = np.array(names(voc)[::-1])  # MATLAB's N x L char matrix
    mat = tmp_path / "a.mat"
    scipy_io.savemat(mat, {"boxes": cells(raw[::-1], column=True), "images": char_matrix})
    result = all_boxes(import_mat_proposals(mat, voc, tmp_path / "a.npz").path)
    for name, b in zip(names(voc), raw):
        np.testing.assert_array_equal(result[name], convert_mat_boxes(b)[0])


def test_boxes_outside_the_image_are_counted(voc, tmp_path):
    raw = [[[1, 1, 129, 10], [1, 1, 10, 10]], [[0, 1, 10, 10]], [[1, 1, 128, 128]], [[2, 2, 9, 9]]]
    report = import_mat_proposals(save_v5(tmp_path / "a.mat", raw), voc, tmp_path / "a.npz")
    assert report.outside == 2 and report.outside_images == names(voc)[:2]
    assert all_boxes(report.path)[names(voc)[1]].tolist() == [[0, -1, 10, 10]]  # kept as they are


def test_meta_says_how_the_file_was_made(voc, tmp_path):
    mat = save_v5(tmp_path / "a.mat", random_boxes(4, [3, 3, 3, 3]))
    report = import_mat_proposals(mat, voc, tmp_path / "a.npz", rule="fast-rcnn")
    meta = ProposalFile(report.path).meta
    assert meta["method"] == "selective-search-mat" and meta["source"] == "a.mat"
    assert meta["small_boxes"] == "fast-rcnn" and meta["min_size"] == 2 and meta["num_images"] == NUM
    assert len(meta["source_sha1"]) == 40 and meta["by_name"] is False


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "row, expected",
    [
        ([[1, 2, 3]], "expected a k x 4 array (y1, x1, y2, x2), got shape (1, 3)"),
        ([[1, 2, np.nan, 4], [1, 1, 2, 2]], "row 1 holds NaN or infinity"),
        ([[1, 1, 2, 2], [1, 1, 2, np.inf]], "row 2 holds NaN or infinity"),
        ([[1, 5, 9, 3]], "row 1 (y1, x1, y2, x2) = [1.0, 5.0, 9.0, 3.0] ends before it starts"),
        ([[5, 1, 3, 9]], "ends before it starts"),
    ],
)
def test_malformed_arrays_are_one_line_errors(voc, tmp_path, row, expected):
    raw = [[[1, 1, 5, 5]], np.array(row, dtype=float), [[1, 1, 5, 5]], [[1, 1, 5, 5]]]
    for save in (save_v5, save_v73):
        mat = save(tmp_path / f"{save.__name__}.mat", raw)
        with pytest.raises(ValueError) as e:
            import_mat_proposals(mat, voc, tmp_path / "a.npz")
        one_line_error(e, mat, f"image {names(voc)[1]!r}", "'boxes' cell 2 of 4", expected)
    assert not (tmp_path / "a.npz").exists()


def test_non_numeric_boxes_are_errors(voc, tmp_path):
    mat = tmp_path / "a.mat"
    scipy_io.savemat(mat, {"boxes": cells([np.ones((1, 4)), "oops", np.ones((1, 4)), np.ones((1, 4))])})
    with pytest.raises(ValueError) as e:
        import_mat_proposals(mat, voc, tmp_path / "a.npz")
    one_line_error(e, mat, f"image {names(voc)[1]!r}", "'boxes' cell 2 of 4", "expected numbers, got <U4 values")
    with h5py.File(tmp_path / "b.mat", "w") as f:  # a MATLAB char array in a v7.3 cell
        f.create_dataset("#refs#/a", data=np.ones((4, 1)))
        text = f.create_dataset("#refs#/b", data=np.array([[111], [111], [112], [115]], dtype=np.uint16))
        text.attrs["MATLAB_class"] = np.bytes_("char")
        f.create_dataset("boxes", data=np.array([f["#refs#/a"].ref, text.ref] * 2, dtype=h5py.ref_dtype)[:, None])
    with pytest.raises(ValueError) as e:
        import_mat_proposals(tmp_path / "b.mat", voc, tmp_path / "a.npz")
    one_line_error(e, tmp_path / "b.mat", f"image {names(voc)[1]!r}", "expected numbers, got <U1 values")


def test_file_errors(voc, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        import_mat_proposals(tmp_path / "missing.mat", voc, tmp_path / "a.npz")
    one_line_error(e, tmp_path / "missing.mat", "no such file")
    (tmp_path / "text.mat").write_text("not a MATLAB file, just some text\n" * 10)
    with pytest.raises(ValueError) as e:
        import_mat_proposals(tmp_path / "text.mat", voc, tmp_path / "a.npz")
    one_line_error(e, tmp_path / "text.mat", "not a MATLAB .mat file")
    for name, content in (("empty.mat", b""), ("binary.mat", bytes(range(256)) * 4)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError) as e:
            import_mat_proposals(tmp_path / name, voc, tmp_path / "a.npz")
        one_line_error(e, tmp_path / name, "not a MATLAB .mat file (v5, v7 or v7.3)")
    scipy_io.savemat(tmp_path / "other.mat", {"all_boxes": np.ones((2, 4)), "images": cells(["a"])})
    with pytest.raises(ValueError) as e:
        import_mat_proposals(tmp_path / "other.mat", voc, tmp_path / "a.npz")
    one_line_error(e, tmp_path / "other.mat", "no 'boxes' variable (the file holds: all_boxes, images)")
    with h5py.File(tmp_path / "other73.mat", "w") as f:
        f.create_dataset("proposals", data=np.ones((4, 2)))
    with pytest.raises(ValueError) as e:
        import_mat_proposals(tmp_path / "other73.mat", voc, tmp_path / "a.npz")
    one_line_error(e, tmp_path / "other73.mat", "no 'boxes' variable (the file holds: proposals)")
    scipy_io.savemat(tmp_path / "matrix.mat", {"boxes": np.ones((3, 4))})
    with pytest.raises(ValueError) as e:
        import_mat_proposals(tmp_path / "matrix.mat", voc, tmp_path / "a.npz")
    one_line_error(e, tmp_path / "matrix.mat", "'boxes' must be a 1 x N or N x 1 cell array", "double", "(3, 4)")
    assert not (tmp_path / "a.npz").exists()


def test_image_count_and_name_errors(voc, tmp_path):
    raw = random_boxes(5, [3] * NUM)
    split = names(voc)
    cases = [
        (save_v5(tmp_path / "few.mat", raw[:3]), "'boxes' holds 3 arrays for the 4 images of the split train"),
        (save_v73(tmp_path / "many.mat", raw + raw[:1]), "'boxes' holds 5 arrays for the 4 images of the split train"),
        (
            save_v5(tmp_path / "stranger.mat", raw, images=[*split[:3], "000005"]),
            "image '000005' ('images' cell 4) is not in the split train",
        ),
        (
            save_v73(tmp_path / "stranger73.mat", raw, images=["000005", *split[1:]]),
            "image '000005' ('images' cell 1) is not in the split train",
        ),
        (
            save_v5(tmp_path / "twice.mat", raw, images=[split[0], *split[:3]]),
            f"image {split[0]!r} appears twice in 'images' (cells 1, 2)",
        ),
        (save_v5(tmp_path / "names.mat", raw, images=split[:3]), "'images' holds 3 names but 'boxes' holds 4 arrays"),
        (
            save_v5(tmp_path / "fewnamed.mat", raw[:3], images=split[1:]),
            f"'boxes' holds 3 arrays for the 4 images of the split train; e.g. image {split[0]!r} is not in the file",
        ),
    ]
    for mat, expected in cases:
        with pytest.raises(ValueError) as e:
            import_mat_proposals(mat, voc, tmp_path / "a.npz")
        one_line_error(e, mat, expected)


def test_missing_reader_says_what_to_install(voc, tmp_path, monkeypatch):
    v5 = save_v5(tmp_path / "a.mat", random_boxes(6, [3] * NUM))
    v73 = save_v73(tmp_path / "b.mat", random_boxes(6, [3] * NUM))
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py -> ImportError
    assert import_mat_proposals(v5, voc, tmp_path / "a.npz").images == NUM  # v5 files need no h5py
    with pytest.raises(ImportError) as e:
        import_mat_proposals(v73, voc, tmp_path / "b.npz")
    one_line_error(e, "needs h5py: pip install 'ohem[mat]'")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError) as e:
        import_mat_proposals(v5, voc, tmp_path / "a.npz")
    one_line_error(e, "needs scipy: pip install 'ohem[mat]'")


def test_unknown_rule_and_negative_min_size(voc, tmp_path):
    mat = save_v5(tmp_path / "a.mat", random_boxes(7, [3] * NUM))
    with pytest.raises(ValueError, match="small-box rule: expected one of min-size, fast-rcnn, got 'big'"):
        import_mat_proposals(mat, voc, tmp_path / "a.npz", rule="big")
    with pytest.raises(ValueError, match="min_size must be >= 0, got -1"):
        import_mat_proposals(mat, voc, tmp_path / "a.npz", min_size=-1)


# --------------------------------------------------------------------------------------------- command line
def test_cli_import_end_to_end(voc, tmp_path, capsys, monkeypatch):
    raw = random_boxes(8, [20, 30, 0, 10])
    mat = save_v73(tmp_path / "voc_2007_train.mat", raw, images=names(voc))
    data = ["--data", f"voc:{voc.root}", "--split", "train", "--classes", ",".join(voc.classes)]
    out = tmp_path / "ss.npz"
    assert main(["proposals", *data, "--import-mat", str(mat), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (4 images, 50 boxes, aligned by the file's image names" in printed
    with ProposalFile(out) as f:
        assert f.names() == names(voc)
        for name, b in zip(names(voc), raw):
            np.testing.assert_array_equal(f.boxes(name)[0].numpy(), convert_mat_boxes(b)[0])
        check = f.check_against(voc, allow_empty=True)
        assert check.images == NUM and check.boxes == 50 and check.empty_images == [names(voc)[2]]
    out2 = tmp_path / "ss2.npz"
    argv = ["proposals", *data, "--import-mat", str(mat), "--small-boxes", "fast-rcnn", "--min-size", "3"]
    assert main([*argv, "--out", str(out2)]) == 0
    assert ProposalFile(out2).meta["small_boxes"] == "fast-rcnn" and ProposalFile(out2).meta["min_size"] == 3
    capsys.readouterr()

    assert main(["proposals", *data, "--import-mat", str(mat), "--mode", "fast", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "ohem proposals: error: --mode does not apply to --import-mat; it is for --method selective-search"
    for flag in ("--processes", "--workers"):  # --workers: the old, hidden name of --processes
        assert main(["proposals", *data, "--import-mat", str(mat), flag, "2", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert err == (
            "ohem proposals: error: --processes does not apply to --import-mat; it is for --method selective-search"
        )
    assert main(["proposals", *data, "--small-boxes", "fast-rcnn", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--small-boxes does not apply to --method selective-search; it is for --import-mat" in err
    assert main(["proposals", *data, "--import-mat", str(tmp_path / "nope.mat"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"ohem proposals: error: MATLAB proposals file {tmp_path / 'nope.mat'}: no such file"
    monkeypatch.setitem(sys.modules, "h5py", None)
    assert main(["proposals", *data, "--import-mat", str(mat), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "ohem proposals: error: reading MATLAB .mat proposal files needs h5py: pip install 'ohem[mat]'"
