"""Fuzzing the loaders: random bytes and near-valid files give a result or a one-line DataError, nothing else.

Every reader of :mod:`recneg.data.io` (and ``load_dataset`` on a path, which adds preprocessing, splitting and
:func:`~recneg.data.split.check_split`) is fed random bytes and mutations of a valid file (tokens replaced by
``nan``, ``-1``, huge ids, separators, NUL bytes, non-UTF-8 bytes, cut lines). No other exception type may
escape, and a DataError message is one line.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recneg.data import io as dio
from recneg.data.datasets import load_dataset
from recneg.errors import DataError

VALID = {
    "u.data": "1\t1\t5\t100\n1\t2\t3\t101\n2\t1\t4\t102\n2\t3\t4\t103\n3\t2\t1\t104\n3\t3\t2\t105\n",
    "ratings.dat": "1::1::5::100\n1::2::3::101\n2::1::4::102\n2::3::4::103\n3::2::1::104\n",
    "ratings.csv": "userId,movieId,rating,timestamp\n1,1,5,100\n1,2,3.5,101\n2,1,4,102\n2,3,4,103\n",
    "user_artists.dat": "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n3\t51\t3\n3\t60\t7\n",
    "Beauty.txt": "1 2 3 4 5\n2 3 4 6\n3 1 2 7 8\n4 5 6 7\n",
    "log.csv": "user,item,time,weight\na,x,2020-01-01,1\nb,y,2020-01-02,2\na,z,2020-01-05,3\n"
    "c,x,2020-01-07,1\n",
    "log.tsv": "user_id\titem_id\ttimestamp\nu1\ti1\t1\nu1\ti2\t2\nu2\ti1\t3\nu3\ti3\t4\n",
    "data.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t4\t100\n1\t11\t5\t101\n2\t10\t3\t102\n3\t12\t1\t103\n",
}
NGCF = {
    "train.txt": "0 0 1 2\n1 1 2 3\n2 0 3\n3 2 4\n",
    "test.txt": "0 3\n1 0\n2 4\n3 1\n",
    "item_list.txt": "org_id remap_id\nA 0\nB 1\nC 2\nD 3\nE 4\n",
}
TOKENS = ["", "-1", "nan", "inf", "-inf", "1e30", "99999999999999999999", "4.5", "x", "\t", " ", "::", ",",
          "\n", "\r\n", "\x00", "\xe9", "0", "1", "userId", ":token", "\"", "#"]  # fmt: skip


def _mutate(text: str, ops) -> bytes:
    data = text
    for kind, pos, tok in ops:
        p = pos % (len(data) + 1)
        if kind == 0:
            data = data[:p] + tok + data[p + 1 :]
        elif kind == 1:
            data = data[:p] + tok + data[p:]
        else:
            data = data[:p]
    return data.encode("utf-8", errors="surrogateescape")


mutations = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 400), st.sampled_from(TOKENS)), min_size=1, max_size=4
)
raw_or_mutated = st.one_of(
    st.binary(max_size=300).map(lambda b: ("raw", b)), mutations.map(lambda m: ("mut", m))
)

FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _expect_data_error_only(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DuplicateWarning and friends are fine
        try:
            call()
        except DataError as e:
            assert "\n" not in str(e), str(e)


@pytest.mark.parametrize("name", sorted(VALID))
@FUZZ
@given(case=raw_or_mutated, via_load=st.booleans())
def test_file_loaders_raise_only_data_error(name, case, via_load):
    kind, payload = case
    data = payload if kind == "raw" else _mutate(VALID[name], payload)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        if via_load:
            _expect_data_error_only(lambda: load_dataset(path, valid_ratio=0.2, test_ratio=0.2))
        else:
            _expect_data_error_only(lambda: dio.read_path(path))


@pytest.mark.parametrize("target", sorted(NGCF))
@FUZZ
@given(case=raw_or_mutated, via_load=st.booleans())
def test_ngcf_loader_raises_only_data_error(target, case, via_load):
    kind, payload = case
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "g"
        root.mkdir()
        for name, text in NGCF.items():
            (root / name).write_text(text)
        data = payload if kind == "raw" else _mutate(NGCF[target], payload)
        (root / target).write_bytes(data)
        if via_load:
            _expect_data_error_only(lambda: load_dataset(root, valid_ratio=0.1))
        else:
            _expect_data_error_only(lambda: dio.read_ngcf(root))


@pytest.mark.parametrize(
    "name, data",
    [
        ("Beauty.txt", b"\x1c0"),  # a separator str.split knows and np.fromstring does not
        ("Beauty.txt", b"1 2\x853 4\n"),
        ("log.csv", b"user,item,time\na,x,2020-01-01\nb,y,0020-01-01\n"),  # pandas ns-range overflow
        ("log.csv", b"user,item,time\na,x,2020-01-01\nb,y,1970-01-02T00:00:01\n"),
    ],
)
def test_found_by_fuzzing(name, data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        _expect_data_error_only(lambda: dio.read_path(path))


def test_valid_fixtures_load():
    """The seeds of the fuzzing are valid files (so the mutations are near-valid)."""
    with tempfile.TemporaryDirectory() as d:
        for name, text in VALID.items():
            (Path(d) / name).write_text(text)
            dio.read_path(Path(d) / name)
        root = Path(d) / "g"
        root.mkdir()
        for name, text in NGCF.items():
            (root / name).write_text(text)
        assert dio.read_ngcf(root).n_items == 5
