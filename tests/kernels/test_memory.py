"""The allocator settings: glibc keeps big freed blocks; the user's own choice wins."""
import os
import subprocess
import sys

import pytest

from numpymnv2.kernels import _memory

PROBE = ("import numpymnv2.kernels, numpy as np, resource\n"
         "from numpymnv2.kernels import _memory\n"
         "a = np.ones(40 << 20, np.uint8); del a\n"          # 40 MB: above glibc's default mmap threshold
         "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
         "for _ in range(5):\n"
         "    a = np.ones(40 << 20, np.uint8); del a\n"
         "print(_memory.info()['malloc'], '|', resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")


def _probe(**env):
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "NUMPYMNV2_MALLOC"))}
    run_env.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=run_env, capture_output=True, text=True, check=True)
    decision, faults = out.stdout.rsplit("|", 1)
    return decision.strip(), int(faults)


@pytest.mark.skipif(not _memory.info().get("malloc", "").startswith("glibc"), reason="needs glibc")
def test_big_freed_blocks_are_reused_without_page_faults():
    decision, faults = _probe()
    assert decision.startswith("glibc") and "1024 MiB" in decision
    # five 40 MB arrays allocated and freed again: the same heap block, no new pages (a fresh mmap would fault
    # in every 4 KiB page, or every 2 MiB one with huge pages: at least 100)
    assert faults < 100
    off_decision, off_faults = _probe(NUMPYMNV2_MALLOC="off")
    assert off_decision == "unchanged (NUMPYMNV2_MALLOC)" and off_faults >= 100


def test_the_users_glibc_variables_win():
    assert _probe(MALLOC_TRIM_THRESHOLD_="1000000")[0] == "unchanged (glibc's MALLOC_*_THRESHOLD_ set)"
