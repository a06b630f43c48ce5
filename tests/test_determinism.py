"""Same seed ⇒ identical metrics on CPU, for every registered sampler (and the `deterministic` flag).

Each sampler is trained twice for 2 epochs on tiny synthetic data with a model and loss it supports; the
second run also turns on ``TrainConfig.deterministic`` (``torch.use_deterministic_algorithms(True)``), which
must neither raise on CPU nor change a single number. A different seed must change the numbers.
"""

from __future__ import annotations

import pytest
import torch

from recneg.config import TrainConfig
from recneg.data.split import random_split
from recneg.data.synthetic import SyntheticConfig, generate
from recneg.registry import SAMPLERS, build_loss, build_model, build_sampler
from recneg.train import fit

DIM = 8

#: (model, loss) per sampler kind; anything not listed runs with mf + bpr
PAIRS = {
    "in_batch": ("twotower", "softmax"),
    "mns": ("mf", "softmax"),
    "uniform_corpus": ("mf", "softmax"),
    "popularity_corpus": ("twotower", "softmax"),
    "mixgcf": ("lightgcn", "bpr"),
    "ans": ("mf", "bpr"),
    "dens": ("lightgcn", "bpr"),
    "pdns": ("mf", "softbpr"),
    "srns": ("lightgcn", "bpr"),
}
MODEL_ARGS = {"mf": {"dim": DIM}, "lightgcn": {"dim": DIM, "n_layers": 2}, "twotower": {"hidden": (DIM,)}}
SAMPLER_ARGS = {"ans": {"dim": DIM}, "dens": {"dim": DIM}}


@pytest.fixture(scope="module")
def split():
    data = generate(
        SyntheticConfig(n_users=60, n_items=90, mean_degree=12, min_degree=5, seed=1)
    ).interactions
    return random_split(data, 0.2, 0.1, seed=0)


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _run(split, sampler: str, seed: int = 3, deterministic: bool = False):
    model_name, loss_name = PAIRS.get(sampler, ("mf", "bpr"))
    torch.manual_seed(seed)
    model = build_model(model_name, split.train, **MODEL_ARGS[model_name])
    cfg = TrainConfig(
        epochs=2,
        batch_size=64,
        lr=0.01,
        eval_every=1,
        patience=0,
        progress=False,
        topk=(5, 10),
        metric="recall@10",
        seed=seed,
        deterministic=deterministic,
    )
    sampler_mod = build_sampler(sampler, **SAMPLER_ARGS.get(sampler, {}))
    res = fit(model, sampler_mod, split, build_loss(loss_name), cfg)
    weights = {k: v.clone() for k, v in res.model.state_dict().items()}
    return res, weights


def test_every_sampler_has_a_pair():
    assert set(PAIRS) <= set(SAMPLERS.names())


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_same_seed_same_metrics(split, sampler, restore_determinism):
    a, wa = _run(split, sampler)
    b, wb = _run(split, sampler, deterministic=True)
    assert a.test == b.test
    assert a.valid == b.valid
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert [h.get("sampler") for h in a.history] == [h.get("sampler") for h in b.history]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_a_different_seed_changes_the_run(split):
    a, _ = _run(split, "dns", seed=3)
    b, _ = _run(split, "dns", seed=4)
    assert [h["loss"] for h in a.history] != [h["loss"] for h in b.history]


def test_deterministic_flag_sets_torch_and_cublas(split, restore_determinism, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "unset-below")  # so that monkeypatch restores the env
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    torch.use_deterministic_algorithms(False)
    _run(split, "uniform", deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with pytest.raises(Exception, match="deterministic"):
        TrainConfig(deterministic="yes")
