import json
import subprocess
import sys

import pytest

from recneg.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "recneg", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_train_default_end_to_end_beats_popularity(tmp_path, capsys):
    # the built-in default job (synthetic data), shortened
    rc = main(
        [
            "train",
            "--epochs",
            "20",
            "--lr",
            "0.005",
            "--threads",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "recall" in out and "ndcg" in out and "@20" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    import torch

    from recneg.data.datasets import load_dataset
    from recneg.eval.ranking import evaluate_tables

    split = load_dataset("synthetic")
    pop = torch.tensor(split.train.item_counts, dtype=torch.float32).unsqueeze(1)
    base = evaluate_tables(
        torch.ones(split.n_users, 1), pop, split.test, [split.train, split.valid], topk=(20,)
    )
    assert metrics["test"]["recall@20"] > 2 * base.metrics["recall@20"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["threads"] == 1 and config["sampler"]["name"] == "uniform"
    # evaluate re-scores the saved best model to the same numbers
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["recall@20"] == pytest.approx(metrics["test"]["recall@20"])
    # resuming a finished run reports its metrics and exits 0
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert "already finished" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--sampler", "dnss"], "unknown sampler 'dnss' (did you mean 'dns'?)"),
        (["train", "--sampler-arg", "n_negatives=0"], "n_negatives of"),
        (["train", "--sampler-arg", "n_negative=2"], "did you mean 'n_negatives'?"),
        (["train", "--sampler-arg", "oops"], "--sampler-arg expects key=value"),
        (["train", "--epochs", "0"], "epochs of"),
        (
            ["train", "--regularizer", "l2"],
            "regularizer of TrainConfig must be one of ['r1', 'r2', 'r2_pow'], got 'l2'",
        ),
        (["train", "--topk", "10,x"], "topk"),
        (["train", "--dataset", "no-such-dataset"], "no-such-dataset"),
        (["train", "--resume", "nowhere"], "not a run folder"),
        (["train", "--resume", "nowhere", "--epochs", "3"], "--resume takes no other flags"),
        (["evaluate", "nowhere"], "not a run folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_config_file_and_flag_override(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        '[sampler]\nname = "popularity"\nalpha = 0.5\n[train]\nepochs = 2\nbatch_size = 512\n'
        "progress = false\nthreads = 1\n"
    )
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["sampler"] == {"name": "popularity", "alpha": 0.5}
    assert saved["train"]["epochs"] == 1 and saved["train"]["batch_size"] == 512
    assert saved["train"]["keep_freed_memory"] is True  # the default
    args = [
        "train",
        "--config",
        str(cfg),
        "--epochs",
        "1",
        "--no-keep-freed-memory",
        "--out",
        str(tmp_path / "s"),
    ]
    assert main(args) == 0
    assert json.loads((tmp_path / "s" / "config.json").read_text())["train"]["keep_freed_memory"] is False
    bad = tmp_path / "bad.toml"
    bad.write_text("[trian]\nepochs = 2\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown section [trian] (did you mean 'train'?)" in capsys.readouterr().err


def test_list_and_unknown_flag_subprocess():
    res = run_cli("list", "samplers")
    assert res.returncode == 0
    for name in ("uniform", "popularity", "dns", "pdns", "mixgcf", "ans"):
        assert f"\n{name} " in "\n" + res.stdout
    assert "n_candidates" in res.stdout
    res = run_cli("train", "--no-such-flag")
    assert res.returncode == 2 and "unrecognized arguments" in res.stderr
    res = run_cli("list", "datasets")
    assert res.returncode == 0 and "gowalla" in res.stdout


def test_data_stats(capsys):
    assert main(["data", "stats", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "users" in out and "items" in out
