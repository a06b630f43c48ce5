"""Side features: alignment to internal ids, unknown bucket, bags, loaders of public files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recneg.data.features import (
    FeatureSet,
    age_bucket,
    feature_ids,
    gather_bags,
    lastfm_features,
    movielens_100k_features,
    read_lastfm_artist_tags,
    read_movielens_items,
    read_movielens_users,
)
from recneg.data.interactions import Interactions
from recneg.errors import DataError

torch.set_num_threads(1)
ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"  # ../shared beside the repo


def _frame():
    return pd.DataFrame(
        {
            "id": [30, 10, 20],
            "color": ["red", "blue", None],
            "tags": [["b", "a", "b"], "c|a", []],
            "price": [3.0, 1.0, 2.0],
            "vec": [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])],
        }
    )


def test_alignment_follows_original_ids_and_unknown_bucket():
    ids = np.array(["10", "99", "30", "20"])  # internal order; "99" has no row; strings match int keys
    fs = FeatureSet.from_frame(
        _frame(), "id", ids, categorical=["color"], multi_hot=["tags"], dense=["price", "vec"]
    )
    assert fs.n_rows == 4 and fs.known.tolist() == [True, False, True, True]
    vocab = fs.categorical_vocabs[0]
    assert vocab == ("<unk>", "blue", "red")
    assert [vocab[c] for c in fs.categorical[:, 0].tolist()] == [
        "blue",
        "<unk>",
        "red",
        "<unk>",
    ]  # null -> unk
    # duplicates inside a set are dropped; empty set and missing row -> the unknown token
    assert fs.multi_hot["tags"].to_lists() == [["c", "a"], ["<unk>"], ["b", "a"], ["<unk>"]]
    assert fs.dense_names == ("price", "vec[0]", "vec[1]")
    assert fs.dense.tolist() == [[1.0, 3.0, 4.0], [0.0, 0.0, 0.0], [3.0, 1.0, 2.0], [2.0, 5.0, 6.0]]


def test_feature_ids_from_interactions():
    inter = Interactions([0, 1], [1, 0], n_users=2, n_items=2, item_ids=np.array([7, 3]))
    assert feature_ids(inter, "items").tolist() == [7, 3]
    assert feature_ids(inter, "users").tolist() == [0, 1]  # identity without a map
    fs = FeatureSet.from_frame(
        pd.DataFrame({"k": [3.0, 7.0], "v": [1.0, 2.0]}), "k", feature_ids(inter, "items"), dense=["v"]
    )  # float keys 3.0 match int ids 3
    assert fs.dense[:, 0].tolist() == [2.0, 1.0]


def test_gather_bags_selects_rows():
    indices = torch.tensor([1, 2, 3, 4, 5, 6])
    offsets = torch.tensor([0, 2, 3, 6])  # rows: [1,2], [3], [4,5,6]
    ind, off = gather_bags(indices, offsets, torch.tensor([2, 0, 2, 1]))
    assert ind.tolist() == [4, 5, 6, 1, 2, 4, 5, 6, 3] and off.tolist() == [0, 3, 5, 8, 9]
    bag = torch.nn.EmbeddingBag(7, 2, mode="mean")
    out = bag(ind, off[:-1])
    assert torch.allclose(out[1], bag.weight[[1, 2]].mean(0))


def test_bad_frames_raise_data_errors():
    with pytest.raises(DataError, match="more than one row"):
        FeatureSet.from_frame(pd.DataFrame({"id": [1, 1], "c": ["a", "b"]}), "id", [1], categorical=["c"])
    with pytest.raises(DataError, match="no feature column 'nope'"):
        FeatureSet.from_frame(_frame(), "id", [10], categorical=["nope"])
    with pytest.raises(DataError, match="not finite"):
        FeatureSet.from_frame(pd.DataFrame({"id": [1], "x": [np.nan]}), "id", [1], dense=["x"])


def test_merge_and_repr():
    a = FeatureSet.from_frame(_frame(), "id", [10, 20], categorical=["color"])
    b = FeatureSet.from_frame(_frame(), "id", [10, 20], multi_hot=["tags"], dense=["price"])
    m = a.merge(b)
    assert m.categorical_names == ("color",) and set(m.multi_hot) == {"tags"} and m.n_dense == 1
    assert "color(3)" in repr(m)
    with pytest.raises(DataError, match="both"):
        a.merge(a)


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow not installed: Parquet reading is an optional extra")
    frame = _frame().drop(columns=["vec"])
    frame["tags"] = ["b|a", "c|a", ""]
    path = tmp_path / "items.parquet"
    frame.to_parquet(path)
    fs = FeatureSet.from_parquet(path, "id", [20, 30], categorical=["color"], multi_hot=["tags"])
    assert fs.multi_hot["tags"].to_lists() == [["<unk>"], ["b", "a"]]


def _write_ml100k(folder: Path):
    flags = ["0"] * 19
    toy = flags.copy()
    toy[3] = toy[4] = toy[5] = "1"  # Animation, Children's, Comedy
    lines = [
        "|".join(["1", "Toy Story (1995)", "01-Jan-1995", "", "http://x", *toy]),
        "|".join(["2", "Amélie (2001)", "", "", "http://y", *(["1"] + ["0"] * 18)]),
    ]
    (folder / "u.item").write_bytes("\n".join(lines).encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|17|F|student|T8H1N\n3|60|M|retired|02139\n")


def test_movielens_loaders_on_tiny_files(tmp_path):
    _write_ml100k(tmp_path)
    items = read_movielens_items(tmp_path / "u.item")
    assert items["genres"].tolist() == [["Animation", "Children's", "Comedy"], ["unknown"]]
    assert items["title"][1] == "Amélie (2001)" and items["decade"][0] == "1990s"
    assert pd.isna(items["decade"][1])
    users = read_movielens_users(tmp_path / "u.user")
    assert users["age_bucket"].tolist() == ["18-24", "<18", "56+"]
    assert users["zip_prefix"].tolist() == ["8", "T", "0"]
    train = Interactions(
        [0, 1], [0, 1], n_users=3, n_items=3, user_ids=np.array([2, 1, 3]), item_ids=np.array([2, 1, 1682])
    )
    uf, itf = movielens_100k_features(tmp_path, train)
    assert uf.categorical_names == ("age_bucket", "gender", "occupation", "zip_prefix")
    occ = uf.categorical_vocabs[2]
    assert [occ[c] for c in uf.categorical[:, 2].tolist()] == ["student", "technician", "retired"]
    assert itf.multi_hot["genres"].to_lists()[2] == ["<unk>"] and not bool(itf.known[2])
    decade = itf.categorical_vocabs[0]
    assert [decade[c] for c in itf.categorical[:, 0].tolist()] == [
        "<unk>",
        "1990s",
        "<unk>",
    ]  # no date -> unk


def test_movielens_loader_reports_bad_lines(tmp_path):
    (tmp_path / "u.item").write_text("1|T|01-Jan-1995||u|" + "|".join(["0"] * 18 + ["2"]) + "\n")
    with pytest.raises(DataError, match="line 1, genre flag 19"):
        read_movielens_items(tmp_path / "u.item")
    (tmp_path / "u.user").write_text("1|old|M|x|1\n")
    with pytest.raises(DataError, match="line 1, age 'old'"):
        read_movielens_users(tmp_path / "u.user")


def test_age_buckets():
    assert age_bucket([7, 18, 24, 25, 49, 50, 56, 73]).tolist() == [
        "<18",
        "18-24",
        "18-24",
        "25-34",
        "45-49",
        "50-55",
        "56+",
        "56+",
    ]


def test_lastfm_top_tags(tmp_path):
    rows = ["userID\tartistID\ttagID\tday\tmonth\tyear"]
    # artist 5: tag 9 x3, tag 2 x2, tag 4 x2, tag 1 x1 -> top-3 = [9, 2, 4] (tie broken by smaller id)
    for u, t in [(1, 9), (2, 9), (3, 9), (1, 4), (2, 4), (1, 2), (3, 2), (4, 1)]:
        rows.append(f"{u}\t5\t{t}\t1\t1\t2009")
    rows.append("1\t7\t1\t1\t1\t2009")
    (tmp_path / "user_taggedartists.dat").write_text("\n".join(rows) + "\n")
    tags = read_lastfm_artist_tags(tmp_path / "user_taggedartists.dat", top_k=3)
    assert tags["artist_id"].tolist() == [5, 7] and tags["tags"].tolist() == [[9, 2, 4], [1]]
    train = Interactions([0, 0], [0, 1], n_items=3, item_ids=np.array([7, 5, 8]))
    _, fs = lastfm_features(tmp_path, train, top_k=2)
    assert fs.multi_hot["tags"].to_lists() == [[1], [9, 2], ["<unk>"]]


@pytest.mark.skipif(not (ML100K / "u.item").exists(), reason="shared MovieLens 100K files not present")
def test_real_movielens_100k_files():
    items = read_movielens_items(ML100K / "u.item")
    users = read_movielens_users(ML100K / "u.user")
    assert len(items) == 1682 and len(users) == 943
    assert items.loc[0, "genres"] == ["Animation", "Children's", "Comedy"]  # Toy Story
    assert set(users["gender"]) == {"M", "F"}


def test_dataset_features_finds_shipped_files(tmp_path):
    from recneg.data.features import dataset_features

    _write_ml100k(tmp_path)
    (tmp_path / "u.data").write_text("1\t1\t5\t0\n")
    train = Interactions(
        [0], [0], n_users=3, n_items=2, user_ids=np.array([1, 2, 3]), item_ids=np.array([1, 2])
    )
    users, items = dataset_features(tmp_path / "u.data", None, train)  # a file path: its folder is searched
    assert users.n_rows == 3 and items.multi_hot["genres"].n_rows == 2
    assert dataset_features("synthetic", None, train) == (None, None)
    assert dataset_features(tmp_path / "nothing-here", None, train) == (None, None)
