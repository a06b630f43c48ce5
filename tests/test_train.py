import json

import pytest
import torch

import recneg
from recneg.config import TrainConfig
from recneg.data.interactions import Split
from recneg.train import Trainer, fit

FAST = dict(epochs=6, batch_size=256, eval_every=2, patience=0, progress=False, lr=5e-3, threads=1)


def _fit(split, sampler="uniform", out_dir=None, **kw):
    torch.manual_seed(0)
    model = recneg.build_model("mf", split.train, dim=16)
    return fit(model, recneg.build_sampler(sampler), split, out_dir=out_dir, **{**FAST, **kw})


def test_same_seed_same_metrics_different_seed_differs(small_split):
    a, b = _fit(small_split, seed=7), _fit(small_split, seed=7)
    assert a.test == b.test and a.valid == b.valid
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    c = _fit(small_split, seed=8)
    assert c.history[0]["loss"] != a.history[0]["loss"]


def test_training_learns_beyond_popularity(small_split):
    res = _fit(small_split, epochs=30, eval_every=5)
    from recneg.eval.ranking import evaluate_tables

    pop = torch.tensor(small_split.train.item_counts, dtype=torch.float32).unsqueeze(1)
    base = evaluate_tables(
        torch.ones(small_split.n_users, 1),
        pop,
        small_split.test,
        [small_split.train, small_split.valid],
        topk=(20,),
    )
    assert res.test["recall@20"] > 1.5 * base.metrics["recall@20"]
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_run_folder_files(small_split, tmp_path):
    res = _fit(small_split, out_dir=tmp_path, epochs=5)
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 5
    recs = [json.loads(x) for x in lines]
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4, 5]
    assert all("train_seconds" in r and "eval_seconds" in r and "loss" in r for r in recs)
    assert "valid" in recs[1] and "valid" not in recs[0] and "valid" in recs[4]  # eval at 2, 4 and the last
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) >= {"valid", "test", "best_epoch", "train_seconds"}
    assert metrics["test"]["recall@20"] == pytest.approx(res.test["recall@20"])
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "model.pt").exists()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no pickle of arbitrary objects
    assert state["epoch"] == 5


def test_early_stopping_restores_best(small_split):
    res = _fit(small_split, epochs=40, eval_every=1, patience=2, lr=0.05)
    scores = [h["valid"]["recall@20"] for h in res.history]
    assert len(res.history) < 40
    best = max(range(len(scores)), key=lambda i: scores[i])
    assert res.best_epoch == best + 1
    assert res.valid["recall@20"] == pytest.approx(scores[best])
    # the test metrics are those of the restored best model
    again = recneg.evaluate(res.model, small_split, "valid")
    assert again.metrics["recall@20"] == pytest.approx(scores[best])


def test_no_validation_runs_fixed_epochs_on_test(small_split):
    split = Split(small_split.train, small_split.test, None)
    res = _fit(split, epochs=4, eval_every=2, patience=1)
    assert len(res.history) == 4
    assert res.valid == {} and res.best_epoch == 4
    assert "test" in res.history[1] and "test" in res.history[3]
    assert res.test["recall@20"] == pytest.approx(res.history[3]["test"]["recall@20"])


def test_resume_after_crash_gives_the_same_result(small_split, tmp_path, monkeypatch):
    cfg = TrainConfig(**{**FAST, "epochs": 6, "eval_every": 2})
    full = _fit(small_split, out_dir=tmp_path / "a", epochs=6)

    torch.manual_seed(0)
    model = recneg.build_model("mf", small_split.train, dim=16)
    trainer = Trainer(model, recneg.build_sampler("uniform"), small_split, config=cfg, out_dir=tmp_path / "b")
    (tmp_path / "b").mkdir()
    original = Trainer.train_epoch

    def crash_at_5(self):
        if self.epoch == 4:  # after the checkpoint of epoch 4, die inside epoch 5
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    model2 = recneg.build_model("mf", small_split.train, dim=16)
    resumed = Trainer(
        model2, recneg.build_sampler("uniform"), small_split, config=cfg, out_dir=tmp_path / "b"
    )
    assert resumed.resume_from(tmp_path / "b")
    assert resumed.epoch == 4
    res = resumed.run()
    assert res.test == full.test
    assert [h["loss"] for h in res.history] == [h["loss"] for h in full.history]
    assert len((tmp_path / "b" / "history.jsonl").read_text().splitlines()) == 6


def test_bad_train_settings_are_named():
    with pytest.raises(recneg.ConfigError, match="batch_size of TrainConfig must be an int >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(recneg.ConfigError, match="metric of TrainConfig"):
        TrainConfig(metric="recall@7")
    with pytest.raises(recneg.ConfigError, match="did you mean 'epochs'"):
        fit(None, None, None, epoch=3)


def test_callbacks_see_batches_and_add_epoch_diagnostics(small_split):
    seen = []

    class Probe:
        def on_batch(self, trainer, b, users, pos, view, neg):
            seen.append((b, users.shape[0], neg.ids.shape))

        def on_epoch_end(self, trainer, record):
            return {"batches_seen": float(len(seen))}

    res = _fit(small_split, epochs=2, callbacks=[Probe()])
    n_batches = -(-len(small_split.train) // FAST["batch_size"])
    assert len(seen) == 2 * n_batches and seen[0][2] == (FAST["batch_size"], 1)
    assert res.history[0]["diagnostics"] == {"batches_seen": float(n_batches)}
