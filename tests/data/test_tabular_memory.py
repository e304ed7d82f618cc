"""read_interactions hands Arrow's freed pages back (ML-25M-size prepare and recommend stay under 4 GB).

Arrow's allocator keeps a read table's pages after the table is freed; the columns
live on as numpy copies, so without handing them back a 25M-row read would hold about
1 GB twice. Measured in a fresh process (the resident size of this one is noise).
"""
from __future__ import annotations

import sys

import pytest

from tests.fresh_python import run_python

SCRIPT = r"""
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from localfm.data.tabular import read_interactions

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024

n = 2_000_000
rng = np.random.default_rng(0)
pq.write_table(pa.table({"user_id": rng.integers(0, 10**6, n), "item_id": rng.integers(0, 10**5, n),
                         "rating": rng.random(n).astype(np.float32), "timestamp": np.arange(n)}), PATH)
pa.default_memory_pool().release_unused()
before = rss()
r = read_interactions(PATH, user_col="user_id", item_col="item_id", rating_col="rating", timestamp_col="timestamp")
held = sum(a.nbytes for a in (r.user, r.item, r.rating, r.timestamp))
print((rss() - before) / held)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_interactions_keeps_little_more_than_the_columns(tmp_path):
    code = SCRIPT.replace("PATH", repr(str(tmp_path / "ratings.parquet")))
    growth = float(run_python(code, timeout=120).strip().splitlines()[-1])
    # Without handing Arrow's pages back the process grows by ~3.3x the columns' bytes; with it ~1.1x.
    assert growth < 1.6, growth
