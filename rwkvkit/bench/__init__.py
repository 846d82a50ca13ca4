"""``rwkvkit bench`` and benchmarks/: the machine (:mod:`.machine`), the contenders (ours in
:mod:`.contenders`, the peers in :mod:`.peers`), timing in interleaved rounds (:mod:`.timing`,
:mod:`.run`) and the tables (:mod:`.table`). This file imports nothing heavy."""

from __future__ import annotations

import tempfile
from pathlib import Path

# Where random checkpoints and the peers' conversions of them are cached between runs.
WORKDIR = Path(tempfile.gettempdir()) / "rwkvkit-bench"
