"""docs/detector.md carries `stability eval`'s tables as that command prints them from the committed result
(`tests/data/zoo_results.json`): a table edited or pasted by hand (the per-mechanism rows at 10 false alarms / 10k
were once a second copy of those at 2) is caught here. Whether the committed result is still what the zoo gives
is `test_eval_benchmark.py`'s business."""

import json
from pathlib import Path

from stability.commands.eval import format_benchmark

ROOT = Path(__file__).resolve().parents[2]


def _tables(text: str) -> list[list[str]]:
    """Every Markdown table of `text`: runs of consecutive lines that start with '|'."""
    out, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    return out


def test_docs_carry_every_table_of_the_committed_benchmark_verbatim():
    result = json.loads((ROOT / "tests" / "data" / "zoo_results.json").read_text(encoding="utf-8"))
    generated = _tables(format_benchmark(result))
    docs = _tables((ROOT / "docs" / "detector.md").read_text(encoding="utf-8"))
    assert len(generated) >= 9, "format_benchmark printed fewer tables than the docs are known to carry"
    for table in generated:
        assert table in docs, f"docs/detector.md lacks (or has a stale copy of) the table headed {table[0]!r}, " \
                              f"first row {table[2]!r}: paste it from `stability eval`"
