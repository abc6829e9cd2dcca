"""Galaxy Zoo 2 loader on a fixture with the gz2 schema (offline, through HF datasets)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vitmech.data import (
    GZ2_CLASSES,
    DataError,
    EmptySplitError,
    InsufficientDataError,
    SchemaError,
    UnknownLabelError,
    UnreadableImageError,
    default_preprocess,
    gz2_features,
    load_gz2,
    make_gz2_fixture,
    open_gz2,
)

# a hand-written fixture: 26 train rows, 10 test rows
TRAIN = (
    ["smooth_round"] * 5
    + ["smooth_cigar"] * 3
    + [""] * 4
    + ["smooth_inbetween"] * 6
    + ["unbarred_spiral"] * 2
    + ["edge_on_disk"] * 2
    + ["barred_spiral"] * 1
    + ["featured_without_bar_or_spiral"] * 3
)
TEST = [
    "smooth_round",
    "",
    "smooth_inbetween",
    "barred_spiral",
    "smooth_cigar",
    "edge_on_disk",
    "",
    "unbarred_spiral",
    "smooth_round",
    "featured_without_bar_or_spiral",
]
# hand counts: train keeps 5+3+2+2+1+3 = 16 of 26; test keeps 7 of 10
HAND_TRAIN = {
    "smooth_round": 5,
    "smooth_cigar": 3,
    "unbarred_spiral": 2,
    "edge_on_disk": 2,
    "barred_spiral": 1,
    "featured_without_bar_or_spiral": 3,
}
HAND_TEST = {
    "smooth_round": 2,
    "smooth_cigar": 1,
    "unbarred_spiral": 1,
    "edge_on_disk": 1,
    "barred_spiral": 1,
    "featured_without_bar_or_spiral": 1,
}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    return make_gz2_fixture(tmp_path_factory.mktemp("gz2"), train_summaries=TRAIN, test_summaries=TEST, seed=1)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_cache")


def _summaries_by_id(directory: Path) -> dict[str, str]:
    """Independent reference: read id_str -> summary straight from the parquet files with pyarrow."""
    out = {}
    for path in sorted((directory / "data").glob("*.parquet")):
        table = pq.read_table(path, columns=["id_str", "summary"])
        out.update(zip(table.column("id_str").to_pylist(), table.column("summary").to_pylist()))
    return out


def test_fixture_has_the_gz2_schema(fixture_dir, cache_dir):
    dd = open_gz2(fixture_dir, cache_dir=cache_dir)
    assert set(dd) == {"train", "test"}
    assert len(dd["train"]) == len(TRAIN) and len(dd["test"]) == len(TEST)
    assert dd["train"].features == gz2_features()
    row = dd["train"][0]
    assert row["image"].size == (64, 64) and row["image"].format == "JPEG"
    assert isinstance(row["summary"], str) and isinstance(row["id_str"], str)


def test_filtering_and_class_mapping_match_hand_count(fixture_dir, cache_dir):
    splits = load_gz2(fixture_dir, val_fraction=0.0, cache_dir=cache_dir, progress=False)
    assert splits.val is None
    report = splits.report
    assert report.taken == {"train": 26, "test": 10}
    assert report.survived == {"train": 16, "test": 7}
    assert report.class_counts["train"] == HAND_TRAIN
    assert report.class_counts["test"] == HAND_TEST
    # every row's label is the REFERENCE index of its summary, read independently from the files
    truth = _summaries_by_id(fixture_dir)
    for name in ("train", "test"):
        labels = [GZ2_CLASSES.index(truth[i]) for i in splits.ids[name]]
        assert labels == splits.labels[name].tolist()
        served = [splits[name][k]["label"] for k in range(len(splits[name]))]
        assert served == labels
    counted = Counter(GZ2_CLASSES[label] for label in splits.labels["train"])
    assert dict(counted) == HAND_TRAIN


def test_class_order_is_reference_order():
    assert GZ2_CLASSES == (
        "smooth_round",
        "smooth_cigar",
        "unbarred_spiral",
        "edge_on_disk",
        "barred_spiral",
        "featured_without_bar_or_spiral",
    )


def test_without_preprocess_items_are_pil_images(fixture_dir, cache_dir):
    splits = load_gz2(fixture_dir, cache_dir=cache_dir, progress=False)
    item = splits.train[0]
    assert set(item) == {"image", "label"}
    assert item["image"].mode == "RGB" and item["image"].size == (64, 64)
    assert isinstance(item["label"], int)


class CountingPreprocess:
    """default_preprocess at 32 px, counting its calls. A module-level class, not a closure: `datasets`
    fingerprints the transform with dill, which pickles a closure by value, into the wrappers of the runtime
    type checks (minutes in the checked default run)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, images):
        self.calls.append(len(images))
        return default_preprocess(images, size=32)


def test_preprocess_runs_lazily_per_batch(fixture_dir, cache_dir):
    counting_preprocess = CountingPreprocess()
    calls = counting_preprocess.calls
    splits = load_gz2(fixture_dir, preprocess=counting_preprocess, cache_dir=cache_dir, progress=False)
    assert calls == []  # nothing decoded or preprocessed at load time
    loader = torch.utils.data.DataLoader(splits.train, batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert calls == [4]  # one call per DataLoader batch
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64
    assert batch["label"].tolist() == splits.labels["train"][:4].tolist()


def test_preprocess_output_is_checked(fixture_dir, cache_dir):
    splits = load_gz2(fixture_dir, preprocess=lambda images: torch.zeros(3, 8, 8), cache_dir=cache_dir, progress=False)
    with pytest.raises(DataError, match=r"\[B=1, C, H, W\]"):
        splits.train[0]


def test_splits_are_disjoint_seeded_and_stable(fixture_dir, cache_dir):
    a = load_gz2(fixture_dir, n_train=20, n_test=8, val_fraction=0.25, seed=3, cache_dir=cache_dir, progress=False)
    b = load_gz2(fixture_dir, n_train=20, n_test=8, val_fraction=0.25, seed=3, cache_dir=cache_dir, progress=False)
    c = load_gz2(fixture_dir, n_train=20, n_test=8, val_fraction=0.25, seed=4, cache_dir=cache_dir, progress=False)
    ids = {name: set(a.ids[name]) for name in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert a.ids == b.ids  # same seed, same splits
    assert a.ids != c.ids  # another seed, another sample
    # stable: the split depends on the row ids, not on the order rows are stored in
    dd = open_gz2(fixture_dir, cache_dir=cache_dir)
    reversed_dd = datasets.DatasetDict({k: v.select(range(len(v) - 1, -1, -1)) for k, v in dd.items()})
    r = load_gz2(reversed_dd, n_train=20, n_test=8, val_fraction=0.25, seed=3, progress=False)
    assert {k: set(v) for k, v in r.ids.items()} == {k: set(v) for k, v in a.ids.items()}


def test_requested_rows_and_survivors_are_reported(fixture_dir, cache_dir):
    splits = load_gz2(fixture_dir, n_train=20, n_test=6, val_fraction=0.2, seed=0, cache_dir=cache_dir, progress=False)
    truth = _summaries_by_id(fixture_dir)
    report = splits.report
    assert report.requested == {"train": 20, "test": 6}
    assert report.taken == {"train": 20, "test": 6}
    # the survivors are exactly the kept ids; recount them from the files
    kept_train = splits.ids["train"] + splits.ids["val"]
    assert all(truth[i] in GZ2_CLASSES for i in kept_train)
    assert report.survived["train"] == len(kept_train)
    assert sum(report.summary_counts["train"].values()) == 20
    dropped = report.summary_counts["train"].get("", 0) + report.summary_counts["train"].get("smooth_inbetween", 0)
    assert report.survived["train"] == 20 - dropped
    assert len(splits.ids["val"]) == round(0.2 * report.survived["train"])


def test_requesting_more_rows_than_exist_is_an_error(fixture_dir, cache_dir):
    with pytest.raises(InsufficientDataError, match="only 26"):
        load_gz2(fixture_dir, n_train=27, cache_dir=cache_dir, progress=False)
    with pytest.raises(InsufficientDataError, match="only 10"):
        load_gz2(fixture_dir, n_train=5, n_test=11, cache_dir=cache_dir, progress=False)


def test_missing_columns_are_reported(tmp_path, cache_dir):
    path = make_gz2_fixture(tmp_path / "nosummary", train_summaries=["smooth_round"] * 3, drop_columns=["summary"])
    with pytest.raises(SchemaError, match="summary"):
        load_gz2(path, n_train=2, n_test=1, cache_dir=cache_dir, progress=False)
    path = make_gz2_fixture(tmp_path / "noimage", train_summaries=["smooth_round"] * 3, drop_columns=["image"])
    with pytest.raises(SchemaError, match="image"):
        load_gz2(path, n_train=2, n_test=1, cache_dir=cache_dir, progress=False)
    features = datasets.Features({"image": datasets.Image(), "summary": datasets.Value("int64")})
    numeric = datasets.Dataset.from_dict({"image": [None], "summary": [3]}, features=features)
    with pytest.raises(SchemaError, match="strings"):
        load_gz2(numeric, n_train=1, progress=False)


def test_unknown_labels_are_reported_or_dropped(tmp_path, cache_dir):
    summaries = ["smooth_round"] * 4 + ["spiral_galaxy"] * 2 + ["edge_on_disk"] * 3
    path = make_gz2_fixture(tmp_path / "bad", train_summaries=summaries, test_summaries=["smooth_round"] * 2)
    with pytest.raises(UnknownLabelError, match="spiral_galaxy"):
        load_gz2(path, cache_dir=cache_dir, progress=False)
    splits = load_gz2(path, on_unknown_label="drop", val_fraction=0, cache_dir=cache_dir, progress=False)
    assert splits.report.survived["train"] == 7
    assert splits.report.summary_counts["train"]["spiral_galaxy"] == 2


def test_unreadable_images_error_or_skip_and_count(tmp_path, cache_dir):
    path = make_gz2_fixture(
        tmp_path / "corrupt",
        train_summaries=["smooth_round"] * 8 + ["smooth_cigar"] * 4,
        test_summaries=["smooth_round"] * 3,
        corrupt={"train": [1, 9]},
    )
    # default: lazy error naming the row when the image is read
    lazy = load_gz2(path, val_fraction=0, cache_dir=cache_dir, progress=False)
    bad_position = lazy.ids["train"].index("train-000001")
    with pytest.raises(UnreadableImageError, match="train-000001"):
        lazy.train[bad_position]
    # verify_images: the same error, up front, listing every bad row
    with pytest.raises(UnreadableImageError, match="2 unreadable"):
        load_gz2(path, verify_images=True, cache_dir=cache_dir, progress=False)
    # skip: dropped and counted, never silently
    skipped = load_gz2(path, on_bad_image="skip", val_fraction=0, cache_dir=cache_dir, progress=False)
    assert sorted(skipped.report.unreadable["train"]) == ["train-000001", "train-000009"]
    assert len(skipped.train) == 10
    assert "train-000001" not in skipped.ids["train"]
    for k in range(len(skipped.train)):
        skipped.train[k]  # every remaining image decodes


def test_empty_split_is_an_error(tmp_path, cache_dir):
    path = make_gz2_fixture(
        tmp_path / "empty", train_summaries=["smooth_round"] * 6, test_summaries=["", "smooth_inbetween", ""]
    )
    with pytest.raises(EmptySplitError, match="'test'"):
        load_gz2(path, cache_dir=cache_dir, progress=False)
    path = make_gz2_fixture(tmp_path / "tiny", train_summaries=["smooth_round"] * 3, test_summaries=["smooth_round"])
    with pytest.raises(EmptySplitError, match="'val'"):
        load_gz2(path, val_fraction=0.1, cache_dir=cache_dir, progress=False)  # round(0.3) = 0 rows


def test_single_parquet_file_and_in_memory_sources(fixture_dir, cache_dir):
    parquet = sorted((fixture_dir / "data").glob("train-*.parquet"))[0]
    with pytest.raises(DataError, match="single split"):
        load_gz2(parquet, cache_dir=cache_dir, progress=False)
    splits = load_gz2(parquet, n_train=18, n_test=8, val_fraction=0, cache_dir=cache_dir, progress=False)
    assert not set(splits.ids["train"]) & set(splits.ids["test"])
    assert splits.report.taken == {"train": 18, "test": 8}
    in_memory = open_gz2(fixture_dir, cache_dir=cache_dir)["train"]
    from_memory = load_gz2(in_memory, n_train=18, n_test=8, val_fraction=0, progress=False)
    assert from_memory.ids == splits.ids  # same rows, same seed -> same splits


def test_save_to_disk_folder_is_a_source(fixture_dir, cache_dir, tmp_path):
    dd = open_gz2(fixture_dir, cache_dir=cache_dir)
    dd.save_to_disk(tmp_path / "saved")
    splits = load_gz2(tmp_path / "saved", val_fraction=0, progress=False)
    assert splits.report.survived == {"train": 16, "test": 7}


def test_missing_path_and_unreachable_hub_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_gz2(tmp_path / "nowhere", progress=False)
    with pytest.raises(DataError, match="hub"):
        open_gz2("someone/no-such-gz2-copy", cache_dir=tmp_path)


def test_default_preprocess_shape_range_and_normalisation():
    images = [np.zeros((40, 30, 3), np.uint8), np.full((50, 50, 3), 255, np.uint8)]
    out = default_preprocess(images)
    assert out.shape == (2, 3, 224, 224)
    assert torch.allclose(out[0], torch.full_like(out[0], -1.0)) and torch.allclose(out[1], torch.ones_like(out[1]))
    with pytest.raises(DataError):
        default_preprocess([])
