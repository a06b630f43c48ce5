"""Every bad-input case of docs/errors.md: a one-line error naming where and what, exit status 2 via the CLI.

Each case asserts the message of the table in docs/errors.md (the stable part of it: file, line, field, what
was expected). A few cases drive ``recneg.cli.main`` end to end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from recneg.cli import main
from recneg.config import RunConfig, TrainConfig
from recneg.data import datasets as ds
from recneg.data import io as dio
from recneg.data.datasets import load_dataset
from recneg.data.interactions import Interactions, Split
from recneg.errors import ConfigError, DataError
from recneg.registry import build_loss, build_model, build_sampler
from recneg.train import DivergedError, Trainer


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


U_DATA = "1\t1\t5\t100\n1\t2\t3\t101\n2\t1\t4\t102\n2\t3\t4\t103\n3\t2\t1\t104\n"


# ---------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize(
    "name, text, expected",
    [
        # malformed line
        (
            "u.data",
            U_DATA + "4\t1\t5\t100\t9\n",
            "u.data line 6: expected 4 fields separated by '\\t', found 5",
        ),
        (
            "u.data",
            "1\t1\t5\n",
            "u.data line 1, field timestamp: expected a finite unix timestamp, got an empty",
        ),
        # non-integer / negative ids
        (
            "u.data",
            "1\t4.5\t5\t100\n",
            "u.data line 1, field item: expected a non-negative integer id, got 4.5",
        ),
        (
            "u.data",
            "1\tx\t5\t100\n",
            "u.data line 1, field item: expected a non-negative integer id, got 'x'",
        ),
        (
            "u.data",
            "-1\t2\t5\t100\n",
            "u.data line 1, field user: expected a non-negative integer id, got -1",
        ),
        ("Beauty.txt", "1 2 3\n2 -3\n", "Beauty.txt line 2, field item (id 1 of the line): expected a "),
        ("Beauty.txt", "1 2 99999999999999999999\n", "expected an integer id below 10^18"),
        # NaN / inf timestamps, ratings, weights
        (
            "u.data",
            "1\t1\t5\tinf\n",
            "u.data line 1, field timestamp: expected a finite unix timestamp, got inf",
        ),
        ("u.data", "1\t1\tnan\t100\n", "field rating: expected a finite rating, got an empty or NaN value"),
        (
            "user_artists.dat",
            "userID\tartistID\tweight\n2\t51\tNaN\n",
            "user_artists.dat line 2, field weight: expected a finite listening count, got an empty or NaN",
        ),
        ("log.csv", "user,item,time\na,b,nan\n", "log.csv line 2, field time: expected a finite timestamp"),
        ("log.csv", "user,item,weight\na,b,-inf\n", "log.csv line 2, field weight: expected a finite number"),
        # empty files
        ("u.data", "", "u.data: file is empty, expected at least one line of data"),
        ("Beauty.txt", "\n \n", "Beauty.txt: file is empty, expected at least one line of data"),
        ("log.csv", "user,item\n", "log.csv: no data lines, expected at least one interaction"),
        # duplicates where the format lists each pair once
        (
            "u.data",
            U_DATA + "2\t3\t5\t200\n",
            "u.data line 6, fields user,item: expected each (user, item) pair once in a MovieLens ratings "
            "file, got a repeat of line 4 (user 2, item 3)",
        ),
        (
            "user_artists.dat",
            "userID\tartistID\tweight\n2\t51\t13\n2\t52\t1\n2\t51\t4\n",
            "user_artists.dat line 4, fields user,item: expected each (user, item) pair once",
        ),
        # wrong header
        (
            "ratings.dat",
            "1::2::5::100\n1\t3::4::101\n",
            "ratings.dat line 2: expected '::' separators, found a tab",
        ),
        ("user_artists.dat", "user\tartist\tweight\n2\t51\t1\n", "user_artists.dat line 1: expected header"),
    ],
)
def test_bad_files(tmp_path, name, text, expected):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as e:
        dio.read_path(path)
    assert expected in one_line(e)
    assert str(path) in str(e.value)


def ngcf(root: Path, train: str, test: str, **lists) -> Path:
    write(root / "train.txt", train)
    write(root / "test.txt", test)
    for name, text in lists.items():
        write(root / f"{name}.txt", text)
    return root


def test_ngcf_malformed_and_ids_beyond_declared_counts(tmp_path):
    d = ngcf(tmp_path / "a", "0 1 2\n1 x\n", "0 1\n")
    with pytest.raises(DataError) as e:
        dio.read_ngcf(d)
    assert "train.txt line 2, field item (id 1 of the line): expected a non-negative integer id, got 'x'" in (
        one_line(e)
    )
    d = ngcf(tmp_path / "b", "0 0 1\n1 1 2\n", "1 0\n", item_list="org_id remap_id\nA 0\nB 1\n")
    with pytest.raises(DataError) as e:
        dio.read_ngcf(d)
    msg = one_line(e)
    assert "item_list.txt: expected remap_id to run over 0..2" in msg
    assert "train.txt line 2, field item (id 2 of the line) has id 2, beyond the 2 declared" in msg
    d = ngcf(tmp_path / "c", "0 0 1\n1 1 2\n", "1 0\n7 1\n", user_list="org_id remap_id\n10 0\n11 1\n")
    with pytest.raises(DataError, match=r"test.txt line 2, field user has id 7, beyond the 2 declared"):
        dio.read_ngcf(d)
    d = ngcf(tmp_path / "d", "0 0 1\n1 1 2\n", "1 0 5000000\n")
    with pytest.raises(DataError) as e:
        dio.read_ngcf(d)
    assert "test.txt line 1, field item (id 2 of the line): expected a remapped 0-based id" in one_line(e)


def test_interactions_ids_beyond_declared_counts():
    with pytest.raises(DataError, match=r"item id 5 is outside the id space 0..2"):
        Interactions([0, 1], [1, 5], n_users=2, n_items=3)
    with pytest.raises(DataError, match=r"users must be non-negative ids, found -1"):
        Interactions([0, -1], [1, 2])
    with pytest.raises(DataError, match=r"timestamps must be finite, interaction 1 has nan"):
        Interactions([0, 1], [1, 2], timestamps=[1.0, float("nan")])
    with pytest.raises(DataError, match=r"weights must be finite, interaction 0 has inf"):
        Interactions([0, 1], [1, 2], weights=[float("inf"), 1.0])


# ---------------------------------------------------------------------------------------------- duplicates
def test_duplicates_in_event_formats_warn_and_count_once(tmp_path):
    d = ngcf(tmp_path / "g", "0 1 2 1\n1 0\n", "0 3\n1 2\n")
    with pytest.warns(dio.DuplicateWarning, match=r"train.txt: 1 duplicate .* line 1 repeats line 1"):
        s = load_dataset(d, split="given", valid_ratio=0)
    assert len(s.train) == 3  # (0, 1) once
    csv = write(tmp_path / "log.csv", "user,item,time\na,x,3\nb,y,1\na,x,2\n")
    with pytest.warns(dio.DuplicateWarning, match=r"log.csv: 1 duplicate .*line 4 repeats line 2 \(user 'a'"):
        inter = dio.read_table(csv)
    assert len(inter) == 3
    from recneg.data.preprocess import dedupe

    kept = dedupe(inter)
    assert len(kept) == 2 and sorted(kept.timestamps.tolist()) == [1.0, 2.0]  # the earliest (a, x) is kept
    seq = write(tmp_path / "Beauty.txt", "1 5 6 5\n")
    with pytest.warns(dio.DuplicateWarning, match="Beauty.txt"):
        dio.read_sequences(seq)


# ---------------------------------------------------------------------------------------------- splits
def test_test_users_without_training_data_are_an_error_but_test_only_items_are_fine(tmp_path):
    d = ngcf(tmp_path / "toy", "0 0 1 2\n1 1 2\n2\n", "0 3\n1 0\n2 4\n")  # user 2: no train items
    with pytest.raises(DataError) as e:
        load_dataset(d, split="given", valid_ratio=0)
    assert (
        "user 2 has 1 test interaction(s) but no training interaction (1 such users); expected every test "
        "user to have training data (items that occur only in test are fine)"
    ) in one_line(e)
    d = ngcf(tmp_path / "ok", "0 0 1 2\n1 1 2\n", "0 3\n1 4\n")  # items 3 and 4 only in test
    s = load_dataset(d, split="given", valid_ratio=0)
    assert s.n_items == 5 and len(s.test) == 2


def test_temporal_split_keeps_late_users(tmp_path):
    rows = [f"{u}\t{i}\t5\t{100 * u + i}\n" for u in (1, 2) for i in range(1, 6)] + ["3\t1\t5\t999\n"]
    path = write(tmp_path / "u.data", "".join(rows))
    s = load_dataset(path, split="temporal", valid_ratio=0, test_ratio=0.1)
    assert s.train.user_counts[2] == 0 and s.test.user_counts[2] == 1  # user 3 arrives after the cutoff


def _tiny_split(n_items_test=6):
    train = Interactions([0, 0, 1, 2], [0, 1, 2, 3], n_users=3, n_items=6)
    test = Interactions([0, 1], [4, 5], n_users=3, n_items=n_items_test)
    return Split(train, test, None, name="tiny")


def _trainer(split, **cfg):
    model = build_model("mf", split.train, dim=4)
    config = TrainConfig(
        epochs=1, batch_size=4, eval_every=1, progress=False, topk=(2,), metric="recall@2", **cfg
    )
    return Trainer(model, build_sampler("uniform"), split, config=config)


def test_mismatched_id_spaces():
    with pytest.raises(DataError) as e:
        _trainer(_tiny_split(n_items_test=7))
    assert "tiny: the test part has an id space of 3 users x 7 items, train has 3 x 6" in one_line(e)
    s = _tiny_split()
    s.train = s.train.with_id_space(3, 6, user_ids=np.array(["a", "b", "c"]))
    s.test = s.test.with_id_space(3, 6, user_ids=np.array(["a", "c", "b"]))
    with pytest.raises(
        DataError, match=r"the test part maps internal user 1 to original id 'c', train maps it"
    ):
        _trainer(s)


def test_a_user_with_every_item_is_refused():
    train = Interactions([0, 0, 0, 1], [0, 1, 2, 0], n_users=2, n_items=3)
    s = Split(train, Interactions([1], [1], n_users=2, n_items=3), None, name="full")
    with pytest.raises(DataError) as e:
        _trainer(s)
    assert "full: user 0 has a training interaction with every one of the 3 items, so no negative item" in (
        one_line(e)
    )


def test_diverged_loss_is_a_recneg_error():
    from recneg.errors import RecnegError

    assert issubclass(DivergedError, FloatingPointError) and issubclass(DivergedError, RecnegError)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "make, expected",
    [
        (
            lambda: build_sampler("dns", n_candidate=4),
            "unknown setting 'n_candidate' for sampler 'dns' (did you ",
        ),
        (
            lambda: build_sampler("dns", n_candidates="abc"),
            "n_candidates of sampler 'dns' must be an int, got 'abc'",
        ),
        (
            lambda: build_sampler("dns", n_candidates=0),
            "n_candidates of DNSConfig must be an int >= 1, got 0",
        ),
        (lambda: build_sampler("dns_mn", n_candidates=4, n_selected=5), "n_selected"),
        (lambda: build_loss("softbpr", beta=0), "beta of SoftBPRConfig must be a finite number > 0.0"),
        (lambda: build_loss("softbpr", beta=-1), "beta of SoftBPRConfig must be a finite number > 0.0"),
        (lambda: TrainConfig(topk=(0, 10)), "topk of TrainConfig must be a list of ints >= 1, got (0, 10)"),
        (lambda: TrainConfig(lr=float("nan")), "lr of TrainConfig must be a finite number > 0.0, got nan"),
        (lambda: TrainConfig(epochs=2.5), "epochs of TrainConfig must be an int, got 2.5"),
        (lambda: TrainConfig(progress="no"), "progress of TrainConfig must be true or false, got 'no'"),
        (lambda: RunConfig.from_dict({"train": {"epoch": 3}}), "unknown setting 'epoch' for config [train]"),
        (
            lambda: RunConfig.from_dict({"train": {"lr": "fast"}}),
            "lr of config [train] must be a number, got",
        ),
        (lambda: RunConfig.from_dict({"trian": {}}), "unknown section [trian] (did you mean 'train'?)"),
        (lambda: RunConfig.from_dict({"data": {"threshold": "high"}}), "threshold of config [data] must be"),
    ],
)
def test_bad_settings(make, expected):
    with pytest.raises(ConfigError) as e:
        make()
    assert expected in one_line(e)


def test_dns_mn_message_names_both_values():
    with pytest.raises(ConfigError) as e:
        build_sampler("dns_mn", n_candidates=4, n_selected=5)
    msg = one_line(e)
    assert "4" in msg and "5" in msg


# ------------------------------------------------------------------------------------------ CLI end to end
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--sampler-arg", "n_candidate=4", "--sampler", "dns"], "(did you mean 'n_candidates'?)"),
        (["--sampler", "dns", "--sampler-arg", "n_candidates=abc"], "must be an int, got 'abc'"),
        (
            ["--sampler", "dns_mn", "--sampler-arg", "n_candidates=2", "--sampler-arg", "n_selected=3"],
            "n_selected",
        ),
        (
            ["--loss", "softbpr", "--loss-arg", "beta=0"],
            "beta of SoftBPRConfig must be a finite number > 0.0",
        ),
        (["--topk", "0"], "topk of TrainConfig must be a list of ints >= 1"),
    ],
)
def test_cli_bad_settings_exit_2(args, expected, capsys):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recneg train: error: ") and expected in err and len(err.splitlines()) == 1


def test_cli_bad_data_file_exit_2(tmp_path, capsys):
    path = write(tmp_path / "u.data", U_DATA + "4\tx\t5\t100\n")
    assert main(["train", "--dataset", str(path), "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"recneg train: error: {path} line 6, field item: expected a non-negative integer id, got 'x'"
    )
    assert main(["data", "stats", str(write(tmp_path / "e" / "u.data", ""))]) == 2
    assert "file is empty" in capsys.readouterr().err


def test_cli_diverged_training_exit_2(tmp_path, capsys):
    args = ["train", "--epochs", "1", "--lr", "1e30", "--threads", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "training loss became nan in epoch 1; expected a finite loss: lower the lr" in err
    assert len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------- downloads
def _spec(monkeypatch, tmp_path, content: bytes):
    src = write(tmp_path / "src" / "Beauty.txt", content.decode())
    rf = ds.RemoteFile("Beauty.txt", src.as_uri(), None, len(content), hashlib.sha256(content).hexdigest())
    spec = dataclasses.replace(ds.SPECS["amazon-beauty-s3rec"], files=(rf,))
    monkeypatch.setitem(ds.SPECS, "amazon-beauty-s3rec", spec)
    monkeypatch.setattr(ds, "_VERIFIED", set())
    return src


def test_corrupted_cache_file_is_detected_and_refetched(tmp_path, monkeypatch):
    good = b"1 2 3 4\n2 3 4 5\n3 4 5 6\n"
    _spec(monkeypatch, tmp_path, good)
    data = tmp_path / "cache"
    load_dataset("amazon-beauty-s3rec", data_dir=data, split="loo")  # first fetch
    cached = data / "amazon-beauty-s3rec" / "Beauty.txt"
    assert cached.read_bytes() == good
    bad = good[:-2] + b"9\n"
    cached.write_bytes(bad)  # one changed byte, same size
    with pytest.warns(ds.CorruptFileWarning, match=r"Beauty.txt has sha256 [0-9a-f]{64}, expected"):
        load_dataset("amazon-beauty-s3rec", data_dir=data, split="loo", download=False)
    assert cached.read_bytes() != good  # download=False: used as it is, with a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("amazon-beauty-s3rec", data_dir=data, split="loo")
    assert cached.read_bytes() == good
    assert (data / "amazon-beauty-s3rec" / "Beauty.txt.corrupt").read_bytes() == bad
    names = sorted(p.name for p in cached.parent.iterdir())
    assert names == ["Beauty.txt", "Beauty.txt.corrupt"]  # no temporaries left


def test_refetch_that_fails_verification_keeps_the_cached_file(tmp_path, monkeypatch):
    good = b"1 2 3 4\n2 3 4 5\n"
    src = _spec(monkeypatch, tmp_path, good)
    data = tmp_path / "cache"
    cached = write(data / "amazon-beauty-s3rec" / "Beauty.txt", "1 2 3\n")  # truncated
    src.write_bytes(b"1 2 3 5\n2 3 4 5\n")  # the server now serves a wrong file too
    with pytest.raises(DataError, match=r"downloaded Beauty.txt of amazon-beauty-s3rec .* has sha256"):
        load_dataset("amazon-beauty-s3rec", data_dir=data)
    assert cached.read_text() == "1 2 3\n"
    assert sorted(p.name for p in cached.parent.iterdir()) == ["Beauty.txt"]


def test_torch_loads_are_weights_only():
    src = Path(__file__).resolve().parents[1] / "src" / "recneg"
    for path in src.rglob("*.py"):
        text = path.read_text()
        for bad in (r"pickle\.loads?\(", r"yaml\.load\(", r"allow_pickle=True", r"(?<![\w.])(eval|exec)\("):
            assert not re.search(bad, text), f"{path}: {bad}"
        for k, line in enumerate(text.splitlines(), 1):
            if "torch.load(" in line and "def " not in line:
                assert "weights_only=True" in line, f"{path}:{k}: torch.load without weights_only=True"
