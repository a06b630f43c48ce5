"""Named datasets, path inputs, load_dataset options, describe(), and the verified atomic download."""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recneg.data import datasets as ds
from recneg.data.datasets import DATASETS, describe, load_dataset
from recneg.data.interactions import Interactions, Split
from recneg.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

U_DATA = "".join(
    f"{u}\t{i}\t{1 + (u * i) % 5}\t{1000 + 10 * u + i}\n" for u in range(1, 7) for i in range(1, 11)
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fake_ngcf(root: Path, name="gowalla"):
    d = root / name
    train = "".join(f"{u} " + " ".join(str((u + k) % 12) for k in range(10)) + "\n" for u in range(5))
    write(d / "train.txt", train)
    write(d / "test.txt", "0 10 11\n1 12\n2 2\n3 1\n4\n")  # item 12 only in test; (2, 2) is also in train
    return d


# ---------------------------------------------------------------------------------------------- names
def test_datasets_listing():
    for name in (
        "synthetic",
        "ml-100k",
        "ml-1m",
        "gowalla",
        "yelp2018",
        "amazon-book",
        "lastfm-hetrec2011",
        "amazon-beauty-s3rec",
    ):
        assert name in DATASETS and DATASETS[name]


def test_synthetic_default_80_10_10():
    s = load_dataset()
    assert isinstance(s, Split) and s.name == "synthetic" and s.valid is not None
    assert s.info["format"] == "synthetic" and s.info["split"] == "random" and s.info["test_ratio"] == 0.1
    n = len(s.train) + len(s.valid) + len(s.test)
    assert abs(len(s.test) / n - 0.1) < 0.02 and abs(len(s.valid) / n - 0.1) < 0.02
    s0 = load_dataset("synthetic", valid_ratio=0)
    assert s0.valid is None and s0.info["test_ratio"] == 0.2 and abs(len(s0.test) / n - 0.2) < 0.03


def test_named_dataset_resolves_in_data_dir_and_env(tmp_path, monkeypatch):
    write(tmp_path / "ml-100k" / "u.data", U_DATA)
    s = load_dataset("ml-100k", data_dir=tmp_path, download=False)
    assert (s.n_users, s.n_items) == (6, 10) and s.info["source"] == str(tmp_path / "ml-100k" / "u.data")
    assert len(s.train) + len(s.valid) + len(s.test) == 60
    monkeypatch.setenv("RECNEG_DATA", str(tmp_path))
    s2 = load_dataset("ML-100K", download=False)  # names are case-insensitive; RECNEG_DATA is the default dir
    assert s2.name == "ml-100k" and s2.info["source"] == s.info["source"]
    assert ds.default_data_dir() == tmp_path
    monkeypatch.delenv("RECNEG_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert ds.default_data_dir() == tmp_path / "cache" / "recneg"


def test_threshold_and_kcore_options(tmp_path):
    write(tmp_path / "ml-100k" / "u.data", U_DATA)
    all_ = load_dataset("ml-100k", data_dir=tmp_path, download=False)
    hi = load_dataset("ml-100k", data_dir=tmp_path, download=False, threshold=4)
    n_hi = sum((1 + (u * i) % 5) >= 4 for u in range(1, 7) for i in range(1, 11))
    assert len(hi.train) + len(hi.valid) + len(hi.test) == n_hi < 60
    assert all_.info["threshold"] is None and hi.info["threshold"] == 4
    core = load_dataset("ml-100k", data_dir=tmp_path, download=False, threshold=4, min_user=2, min_item=3)
    parts = (core.train, core.valid, core.test)
    users = sum(p.user_counts for p in parts)
    items = sum(p.item_counts for p in parts)
    assert users.min() >= 2 and items.min() >= 3  # remapped: every id in the space is in the core
    assert 0 < users.sum() < n_hi and core.n_items < 10


def test_missing_files_error_names_files_and_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("gowalla", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert (
        "train.txt, test.txt" in msg and str(tmp_path / "gowalla") in msg and "raw.githubusercontent" in msg
    )
    assert "\n" not in msg
    assert not (tmp_path / "gowalla").exists()  # download=False creates nothing
    with pytest.raises(DataError, match=r"unknown dataset 'nope'"):
        load_dataset("nope", data_dir=tmp_path)


def test_ngcf_auto_split_carves_validation_and_drops_overlap(tmp_path):
    fake_ngcf(tmp_path)
    s = load_dataset("gowalla", data_dir=tmp_path, download=False, seed=3)
    assert (s.n_users, s.n_items) == (5, 13)  # item 12 occurs only in test and stays in the id space
    assert s.info["dropped_overlap"] == 1 and s.info["split"].startswith("given + random valid")
    assert len(s.train) + len(s.valid) == 50 and (s.valid.user_counts == 1).all()
    assert len(s.test) == 4
    given = load_dataset("gowalla", data_dir=tmp_path, download=False, valid_ratio=0, split="given")
    assert given.valid is None and len(given.train) == 50 and given.info["split"] == "given"
    again = load_dataset("gowalla", data_dir=tmp_path, download=False, seed=3)
    assert np.array_equal(again.valid.items, s.valid.items)
    with pytest.raises(DataError, match="split='temporal' needs timestamps"):
        load_dataset("gowalla", data_dir=tmp_path, download=False, split="temporal")
    rnd = load_dataset(
        "gowalla", data_dir=tmp_path, download=False, split="random", test_ratio=0.2, valid_ratio=0
    )
    assert len(rnd.train) + len(rnd.test) == 54 and rnd.info["split"] == "random"


def test_paths_are_detected(tmp_path):
    d = fake_ngcf(tmp_path, "mine")
    assert load_dataset(d).info["format"] == "ngcf"
    p = write(tmp_path / "log.csv", "u,i,t\n" + "".join(f"{k % 4},{k % 7},{k}\n" for k in range(40)))
    s = load_dataset(p, columns=("u", "i", "t"), split="loo")
    assert s.name == "log" and s.info["format"] == "table" and s.info["split"] == "loo"
    # pairs repeat after k = 28; duplicates keep their earliest time: the last distinct pairs are k = 24..27
    assert sorted(s.test.timestamps.tolist()) == [24, 25, 26, 27]
    r = write(
        tmp_path / "x" / "x.inter",
        "user_id:token\titem_id:token\n" + "".join(f"{k % 3}\t{k}\n" for k in range(30)),
    )
    assert load_dataset(r).info["format"] == "recbole"
    b = write(
        tmp_path / "seq" / "Beauty.txt",
        "".join(f"{u} " + " ".join(map(str, range(u, u + 6))) + "\n" for u in range(1, 5)),
    )
    loo = load_dataset(b, split="loo")
    assert loo.info["format"] == "sequences" and len(loo.test) == 4 and len(loo.valid) == 4
    with pytest.raises(DataError, match="split='given' needs a dataset that ships"):
        load_dataset(b, split="given")
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "missing.csv")


def test_bad_arguments():
    with pytest.raises(ConfigError, match="split of load_dataset"):
        load_dataset(split="nope")
    with pytest.raises(ConfigError, match="valid_ratio of load_dataset"):
        load_dataset(valid_ratio=1.5)
    with pytest.raises(ConfigError, match="test_ratio of load_dataset"):
        load_dataset(test_ratio=0)


# ---------------------------------------------------------------------------------------------- describe
def test_describe_hand_example():
    train = Interactions([0, 0, 1, 2], [0, 1, 0, 0], 3, 4)
    test = Interactions([1, 2], [3, 1], 3, 4)
    d = describe(Split(train, test, name="toy"))
    assert (d["n_users"], d["n_items"], d["n_train"], d["n_valid"], d["n_test"], d["n_interactions"]) == (
        3,
        4,
        4,
        0,
        2,
        6,
    )
    assert d["density"] == pytest.approx(6 / 12)
    assert (d["user_degree_min"], d["user_degree_median"], d["user_degree_max"]) == (1, 1.0, 2)
    # item counts in train [3, 1, 0, 0] → sorted [0, 0, 1, 3]: G = 2·(3·1 + 4·3)/(4·4) − 5/4 = 0.625
    assert d["item_gini"] == pytest.approx(0.625)
    assert d["users_with_test"] == 2 and d["items_only_in_test"] == 1
    assert describe(train)["n_interactions"] == 4
    assert ds._gini(np.array([5, 5, 5])) == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------- download
def _zip_with(path: Path, member: str, content: bytes) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, content)
    return path.as_uri()


def _spec_with(monkeypatch, name, **file_fields):
    spec = ds.SPECS[name]
    rf = dataclasses.replace(spec.files[0], **file_fields)
    monkeypatch.setitem(ds.SPECS, name, dataclasses.replace(spec, files=(rf,)))


def test_download_extracts_verifies_and_moves_into_place(tmp_path, monkeypatch):
    content = U_DATA.encode()
    url = _zip_with(tmp_path / "ml-100k.zip", "ml-100k/u.data", content)
    _spec_with(monkeypatch, "ml-100k", url=url, size=len(content), sha256=hashlib.sha256(content).hexdigest())
    data = tmp_path / "data"
    s = load_dataset("ml-100k", data_dir=data, download=True)
    assert (data / "ml-100k" / "u.data").read_bytes() == content
    assert sorted(p.name for p in (data / "ml-100k").iterdir()) == ["u.data"]  # no temp files left
    assert s.n_users == 6


def test_download_sha256_mismatch_is_rejected_and_leaves_nothing(tmp_path, monkeypatch):
    url = _zip_with(tmp_path / "ml-100k.zip", "ml-100k/u.data", U_DATA.encode())
    _spec_with(monkeypatch, "ml-100k", url=url, size=None)  # the real sha256 of u.data is still expected
    data = tmp_path / "data"
    with pytest.raises(
        DataError, match=r"downloaded u.data of ml-100k .* has sha256 [0-9a-f]{64}, expected 06416e59"
    ):
        load_dataset("ml-100k", data_dir=data, download=True)
    assert not (data / "ml-100k").exists()  # no file, no temporaries, no empty folder
    write(data / "ml-100k" / "README", "mine")  # an existing folder is kept, with only what was there
    with pytest.raises(DataError, match="has sha256"):
        load_dataset("ml-100k", data_dir=data, download=True)
    assert [p.name for p in (data / "ml-100k").iterdir()] == ["README"]


def test_download_size_and_git_sha1_checks(tmp_path, monkeypatch):
    content = b"0 1 2\n1 0\n"
    raw = write(tmp_path / "train.txt", content.decode())
    git = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    rf = ds.RemoteFile("Beauty.txt", raw.as_uri(), None, len(content) + 1)
    monkeypatch.setitem(
        ds.SPECS, "amazon-beauty-s3rec", dataclasses.replace(ds.SPECS["amazon-beauty-s3rec"], files=(rf,))
    )
    with pytest.raises(DataError, match=r"has 10 bytes, expected 11"):
        load_dataset("amazon-beauty-s3rec", data_dir=tmp_path / "d")
    assert not (tmp_path / "d" / "amazon-beauty-s3rec").exists()
    rf = ds.RemoteFile("Beauty.txt", raw.as_uri(), None, None, None, "0" * 40)
    monkeypatch.setitem(
        ds.SPECS, "amazon-beauty-s3rec", dataclasses.replace(ds.SPECS["amazon-beauty-s3rec"], files=(rf,))
    )
    with pytest.raises(DataError, match=f"git blob sha1 {git}, expected 0000"):
        load_dataset("amazon-beauty-s3rec", data_dir=tmp_path / "d")
    rf = ds.RemoteFile("Beauty.txt", raw.as_uri(), None, None, None, git)
    monkeypatch.setitem(
        ds.SPECS, "amazon-beauty-s3rec", dataclasses.replace(ds.SPECS["amazon-beauty-s3rec"], files=(rf,))
    )
    s = load_dataset("amazon-beauty-s3rec", data_dir=tmp_path / "d", split="loo")
    assert (
        s.info["format"] == "sequences" and (tmp_path / "d" / "amazon-beauty-s3rec" / "Beauty.txt").is_file()
    )


def test_offline_download_is_a_clear_error(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ds, "_urlopen", offline)
    with pytest.raises(DataError) as e:
        load_dataset("gowalla", data_dir=tmp_path)
    msg = str(e.value)
    assert "download of https://raw.githubusercontent.com/kuandeng/LightGCN" in msg and "no network" in msg
    assert "put train.txt, test.txt into" in msg
    assert not (tmp_path / "gowalla").exists()


def test_official_hashes_are_recorded():
    files = {(name, rf.name): rf for name, spec in ds.SPECS.items() for rf in spec.files}
    assert files["ml-100k", "u.data"].sha256.startswith("06416e59")
    assert files["gowalla", "train.txt"].sha256.startswith("7244696f")
    assert files["amazon-book", "train.txt"].git_sha1 == "6ef55159c5f1fd7f6d86eb9ff290d0cc2854ac99"


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared benchmark data not present at {SHARED_DATA}")
def test_shared_data_published_statistics():
    g = load_dataset("gowalla", data_dir=SHARED_DATA, split="given", valid_ratio=0, download=False)
    assert (g.n_users, g.n_items, len(g.train), len(g.test)) == (29_858, 40_981, 810_128, 217_242)
    assert g.info["dropped_overlap"] == 0
    checks = {
        "ml-100k": (943, 1_682, 100_000),
        "lastfm-hetrec2011": (1_892, 17_632, 92_834),
        "amazon-beauty-s3rec": (22_363, 12_101, 198_502),
    }
    for name, expected in checks.items():
        d = describe(load_dataset(name, data_dir=SHARED_DATA, download=False))
        assert (d["n_users"], d["n_items"], d["n_interactions"]) == expected, name
    ml = load_dataset("ml-100k", data_dir=SHARED_DATA, download=False, threshold=4, valid_ratio=0)
    assert len(ml.train) + len(ml.test) == 55_375
