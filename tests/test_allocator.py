"""recneg.utils.keep_freed_memory: freed large blocks are reused, not returned and faulted in again."""

import json
import platform
import subprocess
import sys

import pytest

import recneg
from recneg.config import TrainConfig
from recneg.train import Trainer

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# a LightGCN-like step: an [N, d] table (18 MiB) through a chain of element-wise operations, twenty times;
# the minor page faults of steps 5-20, after glibc has settled either way (up to three steps): glibc's
# default keeps trimming the freed top of the heap and faulting it in again; with keep_freed_memory the
# same pages are reused
_PROBE = """
import json, resource, sys, torch
from recneg.utils import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.randn(70839, 64)
    for _ in range(3):
        t = t * 1.01 + 0.5
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": sum(faults[4:])}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's: elsewhere keep_freed_memory returns False")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    table_pages = 70839 * 64 * 4 // 4096  # 4 427 pages of 4 KiB in one [N, d] float32 table
    default, kept = _probe("default"), _probe("keep")
    assert kept["applied"] is True
    # over the sixteen steps: glibc's default 17.6-283 k (the tables faulted in again, most steps); kept 0 in
    # 19 of 25 runs and one table's pages once (4.4 k) in the other 6
    assert default["faults"] > 3 * table_pages
    assert kept["faults"] < 2 * table_pages


def test_trainer_applies_it_unless_switched_off(small_split, monkeypatch):
    calls = []
    monkeypatch.setattr("recneg.train.keep_freed_memory", lambda: calls.append(1) or True)
    model = recneg.build_model("mf", small_split.train, dim=8)
    for keep in (False, True):
        Trainer(
            model, recneg.build_sampler("uniform"), small_split, config=TrainConfig(keep_freed_memory=keep)
        )
    assert calls == [1]


def test_setting_is_validated():
    with pytest.raises(recneg.ConfigError, match="keep_freed_memory of TrainConfig"):
        TrainConfig(keep_freed_memory="yes")
