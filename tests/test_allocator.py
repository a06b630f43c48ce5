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

# a LightGCN-like step: an [N, d] table (18 MiB) through a chain of element-wise operations, twelve times;
# the minor page faults of steps 3-12 (glibc's default keeps trimming the freed top of the heap and faulting
# it in again; with keep_freed_memory the same pages are reused)
_PROBE = """
import json, resource, sys, torch
from recneg.utils import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.randn(70839, 64)
    for _ in range(3):
        t = t * 1.01 + 0.5
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": sum(faults[2:])}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's: elsewhere keep_freed_memory returns False")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    table_pages = 70839 * 64 * 4 // 4096  # 4 427 pages of 4 KiB in one [N, d] float32 table
    default, kept = _probe("default"), _probe("keep")
    assert kept["applied"] is True
    assert default["faults"] > 2 * table_pages  # measured 35-132 k over the ten steps
    assert kept["faults"] < table_pages // 4  # measured 0


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
