import json
import sys

import numpy as np
import pytest
import torch

import recneg
from recneg.cli import main
from recneg.data.synthetic import SyntheticConfig, generate
from recneg.errors import ConfigError
from recneg.experiments import CLAIMS, Context, compare, parse_component, parse_method, reproduce
from recneg.experiments import report as report_mod
from recneg.experiments.jobs import false_negative_split, load_job_data, run_grid

TINY_DATA = {"synthetic": {"n_users": 60, "n_items": 80, "mean_degree": 15.0, "seed": 1}, "valid_ratio": 0.1}
TINY_TRAIN = {"epochs": 2, "batch_size": 256, "lr": 5e-3, "eval_every": 1, "patience": 0, "topk": (10, 20)}


def test_parse_method_and_component():
    assert parse_component("dns:n_candidates=16,exclude_positives=false") == (
        "dns",
        {"n_candidates": 16, "exclude_positives": False},
    )
    m = parse_method("pdns=dns:n_candidates=32+softbpr:beta=0.2")
    assert m == {
        "label": "pdns",
        "sampler": ["dns", {"n_candidates": 32}],
        "loss": ["softbpr", {"beta": 0.2}],
    }
    assert parse_method("uniform")["label"] == "uniform" and parse_method("uniform")["loss"] == ["bpr", {}]
    assert parse_method("dns:n_candidates=8")["label"] == "dns-n_candidates8"
    with pytest.raises(ConfigError):
        parse_component("dns:n_candidates")


def test_false_negative_split_4_1_1_nested_reveal():
    inter = generate(SyntheticConfig(n_users=50, n_items=70, mean_degree=18, seed=2)).interactions
    s0, hidden0, shown0 = false_negative_split(inter, 0.0, seed=3)
    s5, hidden5, shown5 = false_negative_split(inter, 0.5, seed=3)
    s1, hidden1, shown1 = false_negative_split(inter, 1.0, seed=3)
    assert len(shown0) == 0 and len(hidden1) == 0
    for s, h, r in ((s0, hidden0, shown0), (s5, hidden5, shown5), (s1, hidden1, shown1)):
        assert np.array_equal(s.train.users, s0.train.users) and np.array_equal(s.train.items, s0.train.items)
        parts = [set(zip(p.users.tolist(), p.items.tolist(), strict=True)) for p in (s.train, s.test, h, r)]
        assert sum(len(p) for p in parts) == len(inter)
        assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    fn = set(zip(hidden0.users.tolist(), hidden0.items.tolist(), strict=True))
    r5 = set(zip(shown5.users.tolist(), shown5.items.tolist(), strict=True))
    r1 = set(zip(shown1.users.tolist(), shown1.items.tolist(), strict=True))
    assert r5 <= r1 == fn  # nested reveals, all of FN at c = 1
    deg = inter.user_counts
    n_test = np.bincount(s0.test.users, minlength=inter.n_users)
    n_fn = np.bincount(hidden0.users, minlength=inter.n_users)
    assert np.all(np.abs(n_test - deg / 6) <= 0.5 + 1e-9) and np.all(np.abs(n_fn - deg / 6) <= 0.5 + 1e-9)
    with pytest.raises(ConfigError):
        false_negative_split(inter, 1.5)


def test_fn_protocol_binds_the_sampler_to_train_and_revealed():
    job = {"data": {**TINY_DATA, "valid_ratio": 0.0}, "protocol": {"name": "false_negatives", "reveal": 1.0}}
    split, extras = load_job_data(job)
    assert split.valid is None and len(extras["hidden_fn"]) == 0
    sampler = recneg.build_sampler("uniform", n_negatives=200).bind(extras["sampler_train"])
    users = torch.arange(split.n_users)
    view = recneg.build_model("mf", split.train, dim=4).view(users, users % split.n_items)
    ids = sampler(users, users % split.n_items, view, torch.Generator().manual_seed(0)).ids
    revealed = extras["sampler_train"].positives()
    assert not bool(revealed.contains(users.unsqueeze(1), ids).any())  # revealed FN never drawn


def test_compare_writes_table_with_significance_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    methods = ["uniform", "dns-8=dns:n_candidates=8"]
    rows = compare([TINY_DATA], ["mf:dim=8"], methods, [0, 1], TINY_TRAIN, out, extras={"hit_k": 10})
    assert [r["method"] for r in rows] == ["uniform", "dns-8"]
    md = (out / "report.md").read_text()
    assert "p vs uniform (seeds)" in md and "± " in md
    dns = json.loads((out / "runs/synthetic/mf/dns-8/s1.json").read_text())
    assert len(dns["per_user"]["users"]) == len(dns["per_user"]["recall@20"]) > 0
    assert dns["hits"]["k"] == 10
    stamp = (out / "runs/synthetic/mf/dns-8/s1.json").stat().st_mtime_ns
    capsys.readouterr()
    compare([TINY_DATA], ["mf:dim=8"], methods, [0, 1], TINY_TRAIN, out)
    assert "4 already done, 0 to run" in capsys.readouterr().out
    assert (out / "runs/synthetic/mf/dns-8/s1.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError):
        compare([TINY_DATA], ["mf"], ["uniform", "uniform"], [0], TINY_TRAIN, out)


def test_figures_skip_cleanly_without_matplotlib(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(report_mod, "_WARNED", False)
    assert report_mod.line_plot({"a": ([1, 2], [3, 4])}, "/nonexistent/x.png", "x", "y") is None
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_figures_written_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    p = report_mod.heatmap(["a", "b"], [[0, 0.2], [0.3, 0]], tmp_path / "h.png")
    assert p is not None and p.stat().st_size > 0


def test_significance_over_seeds_and_users():
    def run(method, seed, values):
        return {
            "job": {"seed": seed, "method": method, "model": ["mf", {}], "data": TINY_DATA},
            "test": {"recall@20": float(np.mean(values))},
            "per_user": {"users": list(range(len(values))), "recall@20": list(values)},
        }

    rng = np.random.default_rng(0)
    base = [run("b", s, rng.random(50) * 0.5) for s in range(3)]
    better = [run("a", s, np.asarray(b["per_user"]["recall@20"]) + 0.1) for s, b in enumerate(base)]
    sig = report_mod.significance(better, base, "recall@20")
    assert sig["n_seeds"] == 3 and sig["n_users"] == 50
    assert sig["p_users"] < 1e-6 and sig["p_seeds"] == 0.0  # constant +0.1 difference


def test_tune_same_budget_per_method(tmp_path):
    pytest.importorskip("optuna")
    from recneg.experiments.tune import tune

    train = {k: v for k, v in TINY_TRAIN.items() if k != "lr"}  # lr searched, reg fixed
    s = tune(TINY_DATA, "mf:dim=8", ["uniform", "dns"], 2, {**train, "reg": 1e-4}, tmp_path)
    assert set(s["methods"]) == {"uniform", "dns"}
    assert all(len(m["trials"]) == 2 for m in s["methods"].values())
    assert s["methods"]["dns"]["sampler"]["n_candidates"] in (8, 16, 32, 64)
    assert set(s["methods"]["uniform"]["train"]) == {"lr"}  # a fixed setting is not searched
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    rows = compare(
        [TINY_DATA],
        ["mf:dim=8"],
        ["uniform", "dns"],
        [0],
        TINY_TRAIN,
        tmp_path / "c",
        tuned=tmp_path / "tuned.json",
    )
    r = json.loads((tmp_path / "c/runs/synthetic/mf/dns/s0.json").read_text())
    assert r["job"]["sampler"][1]["n_candidates"] == tuned["methods"]["dns"]["sampler"]["n_candidates"]
    assert len(rows) == 2


def test_tune_without_optuna_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    from recneg.experiments.tune import tune

    with pytest.raises(ConfigError, match="recneg\\[tune\\]"):
        tune(TINY_DATA, "mf", ["uniform"], 1, TINY_TRAIN, tmp_path)


@pytest.mark.parametrize("name", list(CLAIMS))
def test_reproduce_smoke(name, tmp_path):
    payload = reproduce(name, Context(size="smoke", out=tmp_path, log=None))
    verdicts = payload["verdicts"]
    assert verdicts and all(v["held"] is None or isinstance(v["held"], bool) for v in verdicts)
    md = (tmp_path / "report.md").read_text()
    for v in verdicts:  # "n/a" only with a stated reason (e.g. the same setting best at every K)
        assert v["held"] is not None or ("no trend" in v["evidence"] and "| n/a |" in md)
    assert "| claim | verdict | evidence |" in md and "Smoke size" in md
    assert json.loads((tmp_path / "results.json").read_text())["claim"] == name
    assert list((tmp_path / "runs").rglob("*.json"))


def test_reproduce_unknown_claim_and_cli(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown claim"):
        reproduce("pdns-overfiting", Context(out=tmp_path))
    assert main(["reproduce", "list"]) == 0
    assert "false-negatives" in capsys.readouterr().out
    code = main(
        [
            "compare",
            "--method",
            "uniform",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "c"),
            "--dataset",
            "synthetic",
            "--valid-ratio",
            "0",
        ]
    )
    assert code == 0 and (tmp_path / "c/report.md").is_file()


def test_run_grid_rejects_duplicate_keys(tmp_path):
    job = {"key": "a", "data": TINY_DATA}
    with pytest.raises(ConfigError, match="share the key"):
        run_grid([job, dict(job)], tmp_path)
