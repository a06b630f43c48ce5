"""Readers of the public formats: correct parsing on tiny files, and one-line errors naming file and line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recneg.data import io as dio
from recneg.data.interactions import Split
from recneg.errors import DataError


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pairs(inter):
    """Set of (original user id, original item id) pairs."""
    return set(zip(inter.user_ids[inter.users].tolist(), inter.item_ids[inter.items].tolist(), strict=True))


# ---------------------------------------------------------------------------------------------- NGCF
def test_ngcf_reads_train_test_and_keeps_test_only_items(tmp_path):
    d = tmp_path / "toy"
    write(d / "train.txt", "0 0 1 2\n1 1\n2\n")  # user 2 has no train items: legal
    write(d / "test.txt", "0 3\n1 0 5\n2 4\n")  # items 3,4,5 occur only in test
    s = dio.read_ngcf(d)
    assert isinstance(s, Split) and s.valid is None
    assert (s.n_users, s.n_items) == (3, 6)
    assert s.test.n_items == 6 and s.train.n_items == 6
    assert sorted(zip(s.train.users.tolist(), s.train.items.tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 1),
    ]
    assert sorted(zip(s.test.users.tolist(), s.test.items.tolist(), strict=True)) == [
        (0, 3),
        (1, 0),
        (1, 5),
        (2, 4),
    ]
    assert s.train.user_counts.tolist() == [3, 1, 0]
    assert s.train.user_ids.tolist() == [0, 1, 2]


def test_ngcf_optional_valid_and_id_lists(tmp_path):
    d = tmp_path / "toy"
    write(d / "train.txt", "0 0 1\n1 1 2\n")
    write(d / "valid.txt", "0 2\n")
    write(d / "test.txt", "1 0\n")
    write(d / "user_list.txt", "org_id remap_id\n343 0\n5258 1\n")
    write(d / "item_list.txt", "org_id remap_id\nB00A 0\nB00B 1\nB00C 2\n")
    s = dio.read_ngcf(d)
    assert s.valid is not None and len(s.valid) == 1
    assert s.train.user_ids.tolist() == [343, 5258]
    assert s.train.item_ids.tolist() == ["B00A", "B00B", "B00C"]


def test_ngcf_id_list_mismatch_is_an_error(tmp_path):
    d = tmp_path / "toy"
    write(d / "train.txt", "0 0 1\n1 1 2\n")
    write(d / "test.txt", "1 0\n")
    write(d / "user_list.txt", "org_id remap_id\n343 0\n")
    with pytest.raises(DataError, match=r"user_list.txt: expected remap_id to run over 0..1"):
        dio.read_ngcf(d)


@pytest.mark.parametrize(
    "text, line, field, token",
    [
        ("0 1 2\n1 x 3\n", 2, "item", "'x'"),
        ("0 1 2\n1 2\n-2 3\n", 3, "user", "'-2'"),
        ("0 1 2.5\n", 1, "item", "'2.5'"),
    ],
)
def test_ngcf_malformed_lines_name_file_line_field(tmp_path, text, line, field, token):
    d = tmp_path / "bad"
    write(d / "train.txt", text)
    write(d / "test.txt", "0 1\n")
    with pytest.raises(DataError) as e:
        dio.read_ngcf(d)
    msg = str(e.value)
    assert "train.txt" in msg and f"line {line}" in msg and f"field {field}" in msg and token in msg
    assert "non-negative integer id" in msg and "\n" not in msg


def test_ngcf_empty_file_and_missing_test(tmp_path):
    d = tmp_path / "bad"
    write(d / "train.txt", "\n  \n")
    write(d / "test.txt", "0 1\n")
    with pytest.raises(DataError, match=r"train.txt: file is empty"):
        dio.read_ngcf(d)
    (d / "test.txt").unlink()
    write(d / "train.txt", "0 1\n")
    with pytest.raises(DataError, match=r"missing test.txt"):
        dio.read_ngcf(d)


# ---------------------------------------------------------------------------------------------- MovieLens
def test_ml100k_u_data(tmp_path):
    p = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n")
    inter = dio.read_movielens(p)
    assert (inter.n_users, inter.n_items, len(inter)) == (2, 3, 3)
    assert inter.user_ids.tolist() == [186, 196]  # sorted original ids
    assert pairs(inter) == {(196, 242), (186, 302), (196, 377)}
    assert inter.weights.tolist() == [3, 3, 1]
    assert inter.timestamps.tolist() == [881250949, 891717742, 878887116]
    assert dio.detect_format(p) == "ml-100k"


def test_ml_dat_double_colon(tmp_path):
    p = write(
        tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    inter = dio.read_movielens(p)
    assert pairs(inter) == {(1, 1193), (1, 661), (2, 1193)}
    assert inter.weights.tolist() == [5, 3, 4]
    assert dio.detect_format(p) == "ml-dat"


def test_ml_csv_header(tmp_path):
    p = write(
        tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n"
    )
    inter = dio.read_movielens(p)
    assert pairs(inter) == {(1, 2), (1, 29)} and inter.weights.tolist() == [3.5, 3.5]
    assert dio.detect_format(p) == "ml-csv"
    bad = write(tmp_path / "x" / "ratings.csv", "user,movie,rating,timestamp\n1,2,3.5,1\n")
    with pytest.raises(
        DataError, match=r"ratings.csv line 1: expected header 'userId,movieId,rating,timestamp'"
    ):
        dio.read_movielens(bad)


@pytest.mark.parametrize(
    "text, line, field",
    [
        ("1\t2\t3\t4\n1\t2\t3\t4\t5\n", 2, None),  # too many fields
        ("1\t2\t3\t4\n1\t2\n", 2, "rating"),  # too few fields
        ("1\t2\t3\t4\n\n1\tx\t3\t4\n", 3, "item"),  # blank line 2 is skipped, numbering stays physical
        ("1\t2\t3\t4\n-1\t2\t3\t4\n", 2, "user"),
        ("1\t2\t3\t4\n1\t2\t3\tnan\n", 2, "timestamp"),
        ("1\t2\t3\t4\n1\t2\tinf\t4\n", 2, "rating"),
        ("1\t2.5\t3\t4\n", 1, "item"),
    ],
)
def test_ml100k_malformed(tmp_path, text, line, field):
    p = write(tmp_path / "u.data", text)
    with pytest.raises(DataError) as e:
        dio.read_movielens(p)
    msg = str(e.value)
    assert str(p) in msg and f"line {line}" in msg and "expected" in msg and "\n" not in msg
    if field:
        assert f"field {field}" in msg


def test_empty_files(tmp_path):
    with pytest.raises(DataError, match=r"u.data: file is empty"):
        dio.read_movielens(write(tmp_path / "u.data", ""))
    with pytest.raises(DataError, match=r"ratings.dat: file is empty"):
        dio.read_movielens(write(tmp_path / "ratings.dat", "\n"))
    with pytest.raises(DataError, match=r"user_artists.dat: no data lines"):
        dio.read_hetrec_lastfm(write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n"))
    with pytest.raises(DataError, match=r"no such file"):
        dio.read_movielens(tmp_path / "nope" / "u.data")


# ---------------------------------------------------------------------------------------------- Last.fm
def test_hetrec_lastfm(tmp_path):
    p = write(
        tmp_path / "user_artists.dat", "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n3\t51\t7\n"
    )
    inter = dio.read_hetrec_lastfm(p)
    assert pairs(inter) == {(2, 51), (2, 52), (3, 51)}
    assert inter.weights.tolist() == [13883, 11690, 7] and inter.timestamps is None
    bad = write(tmp_path / "b" / "user_artists.dat", "userID\tartistID\tweight\n2\t51\t13883\n2\t52\tNaN\n")
    with pytest.raises(
        DataError, match=r"user_artists.dat line 3, field weight: expected a finite listening count"
    ):
        dio.read_hetrec_lastfm(bad)
    bad = write(tmp_path / "c" / "user_artists.dat", "2\t51\t13883\n")
    with pytest.raises(DataError, match=r"line 1: expected header"):
        dio.read_hetrec_lastfm(bad)


# ---------------------------------------------------------------------------------------------- sequences
def test_sequences_positions_are_timestamps(tmp_path):
    p = write(tmp_path / "Beauty.txt", "1 1 2 3\n2 4 1\n3 5 2 6 7\n")
    inter = dio.read_sequences(p)
    assert (inter.n_users, inter.n_items, len(inter)) == (3, 7, 9)
    assert inter.user_ids.tolist() == [1, 2, 3] and inter.item_ids.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert inter.timestamps.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert inter.item_ids[inter.items].tolist() == [1, 2, 3, 4, 1, 5, 2, 6, 7]
    assert dio.detect_format(p) == "sequences"
    with pytest.raises(DataError, match=r"Beauty.txt line 2, field item \(id 2 of the line\).*got 'a'"):
        dio.read_sequences(write(tmp_path / "b" / "Beauty.txt", "1 1 2\n2 3 a\n"))


# ---------------------------------------------------------------------------------------------- tables
def test_csv_tsv_with_columns_and_string_ids(tmp_path):
    p = write(tmp_path / "log.csv", "uid,iid,ts,other\nalice,x,10,a\nbob,y,5,b\nalice,y,7,c\n")
    inter = dio.read_table(p, columns=("uid", "iid", "ts"))
    assert inter.user_ids.tolist() == ["alice", "bob"] and inter.item_ids.tolist() == ["x", "y"]
    assert pairs(inter) == {("alice", "x"), ("bob", "y"), ("alice", "y")}
    assert inter.timestamps.tolist() == [10, 5, 7]
    t = write(tmp_path / "log.tsv", "user\titem\ttime\n1\t2\t2020-01-02\n1\t3\t2020-01-01\n")
    inter = dio.read_table(t)  # default column names, date strings → seconds
    assert inter.timestamps[0] - inter.timestamps[1] == 86400
    with pytest.raises(DataError, match=r"column 'nope' \(for item\) is not in the header"):
        dio.read_table(p, columns=("uid", "nope"))
    bad = write(tmp_path / "bad.csv", "user,item,time\n1,2,3\n1,,4\n")
    with pytest.raises(DataError, match=r"bad.csv line 3, field item: expected an id, got an empty or NaN"):
        dio.read_table(bad)
    bad = write(tmp_path / "bad2.csv", "user,item,time\n1,2,3\n1,3,soon\n")
    with pytest.raises(DataError, match=r"bad2.csv line 3, field time: expected a finite timestamp"):
        dio.read_table(bad)


def test_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    p = tmp_path / "log.parquet"
    pd.DataFrame({"user": [5, 5, 9], "item": [1, 2, 1], "time": [1.0, 2.0, np.nan]}).to_parquet(p)
    with pytest.raises(DataError, match=r"log.parquet row 3, field time"):
        dio.read_table(p)
    pd.DataFrame({"user": [5, 5, 9], "item": [1, 2, 1], "time": [1.0, 2.0, 3.0]}).to_parquet(p)
    inter = dio.read_table(p)
    assert pairs(inter) == {(5, 1), (5, 2), (9, 1)} and dio.detect_format(p) == "table"


def test_recbole_inter(tmp_path):
    p = write(
        tmp_path / "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n186\t302\t3\t891717742\n",
    )
    inter = dio.read_recbole_inter(p)
    assert pairs(inter) == {(196, 242), (186, 302)}
    assert inter.weights.tolist() == [3, 3] and inter.timestamps.tolist() == [881250949, 891717742]
    assert dio.detect_format(p) == "recbole" and dio.detect_format(tmp_path) == "recbole"
    q = write(tmp_path / "x" / "a.inter", "session:token\tproduct:token\nA\tp1\nB\tp2\n")
    inter = dio.read_recbole_inter(q, columns=("session", "product"))
    assert pairs(inter) == {("A", "p1"), ("B", "p2")}
    bad = write(tmp_path / "y" / "b.inter", "user_id:token\titem_id\n1\t2\n")
    with pytest.raises(DataError, match=r"b.inter line 1, field 'item_id': expected 'name:type'"):
        dio.read_recbole_inter(bad)
    bad = write(
        tmp_path / "z" / "c.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t3\tx\n"
    )
    with pytest.raises(DataError, match=r"c.inter line 3, field timestamp"):
        dio.read_recbole_inter(bad)


def test_detect_format_of_directories_and_unknown(tmp_path):
    write(tmp_path / "a" / "u.data", "1\t1\t1\t1\n")
    assert dio.detect_format(tmp_path / "a") == "ml-100k"
    write(tmp_path / "b" / "train.txt", "0 1\n")
    assert dio.detect_format(tmp_path / "b") == "ngcf"
    with pytest.raises(DataError, match=r"unknown data format"):
        dio.detect_format(write(tmp_path / "c" / "data.bin", "x"))
