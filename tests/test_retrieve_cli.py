"""`recneg retrieve RUN_DIR --users ... --k K [--index exact|hnsw|ivf]` on a tiny run trained here."""

import json

import pytest
import torch

from recneg.cli import main
from recneg.retrieval import faiss_available

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieve") / "run"
    args = ["train", "--epochs", "2", "--eval-every", "1", "--dim", "16", "--threads", "1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    return out


def _brute_force(run_dir, users, k):
    """Top-k original item ids per original user id from model.pt, seen items masked, by hand."""
    from recneg.runner import load_run_config, load_split

    maps = json.loads((run_dir / "id_maps.json").read_text())
    state = torch.load(run_dir / "model.pt", weights_only=True)
    u_t, i_t = state["user_embedding.weight"], state["item_embedding.weight"]
    split = load_split(load_run_config(run_dir))
    csr = split.train.csr
    out = {}
    for orig in users:
        u = maps["users"].index(orig)
        scores = u_t[u] @ i_t.T
        scores[torch.as_tensor(csr.indices[csr.indptr[u] : csr.indptr[u + 1]], dtype=torch.long)] = -float(
            "inf"
        )
        out[orig] = [maps["items"][j] for j in torch.topk(scores, k).indices.tolist()]
    return out


def test_exact_retrieve_matches_brute_force(run_dir, capsys):
    capsys.readouterr()
    maps = json.loads((run_dir / "id_maps.json").read_text())
    users = maps["users"][:3]
    assert main(["retrieve", str(run_dir), "--users", ",".join(map(str, users)), "--k", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    expected = _brute_force(run_dir, users, 5)
    assert [r["user"] for r in res["users"]] == users
    for row in res["users"]:
        assert row["items"] == expected[row["user"]]
        assert row["scores"] == sorted(row["scores"], reverse=True)
    assert res["exact"] and res["ann_recall@5"] is None


def test_plain_output_lists_each_user(run_dir, capsys):
    capsys.readouterr()
    maps = json.loads((run_dir / "id_maps.json").read_text())
    u = maps["users"][7]
    assert main(["retrieve", str(run_dir), "--users", str(u), "--k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"user {u}: ") and len(lines[0].split(":")[1].split()) == 4
    assert lines[-1].startswith("index: exact")


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_ann_index_reports_recall_vs_exact(run_dir, capsys, index):
    capsys.readouterr()
    maps = json.loads((run_dir / "id_maps.json").read_text())
    users = ",".join(map(str, maps["users"][:4]))
    assert main(["retrieve", str(run_dir), "--users", users, "--k", "10", "--index", index]) == 0
    out = capsys.readouterr().out
    assert f"index: {index} (faiss); ANN recall@10 vs exact:" in out
    assert main(["retrieve", str(run_dir), "--users", users, "--k", "10", "--index", index, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0.5 <= res["ann_recall@10"] <= 1.0
    assert 0.5 <= res["ann_recall@10_sample"] <= 1.0 and res["n_sample"] == len(maps["users"])
    assert all(len(r["items"]) == 10 for r in res["users"])


def test_include_seen_can_return_training_items(run_dir, capsys):
    capsys.readouterr()
    maps = json.loads((run_dir / "id_maps.json").read_text())
    u = maps["users"][0]
    assert main(["retrieve", str(run_dir), "--users", str(u), "--k", "50", "--include-seen", "--json"]) == 0
    seen_any = json.loads(capsys.readouterr().out)["users"][0]["items"]
    assert main(["retrieve", str(run_dir), "--users", str(u), "--k", "50", "--json"]) == 0
    unseen = json.loads(capsys.readouterr().out)["users"][0]["items"]
    assert seen_any != unseen  # a trained model ranks some training items in its top-50


def test_errors_are_one_line_exit_2(run_dir, tmp_path, capsys):
    capsys.readouterr()
    assert main(["retrieve", str(run_dir), "--users", "no-such-user"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recneg retrieve: error: unknown user id 'no-such-user'") and "\n" not in err
    assert main(["retrieve", str(tmp_path), "--users", "1"]) == 2
    assert "not a run folder" in capsys.readouterr().err
