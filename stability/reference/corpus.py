"""The training corpus: English prose that ships with the package.

`stability/reference/corpus.txt.gz` is the CPython documentation's topic texts (`pydoc_data.topics`, PSF licence),
which every CPython installation carries. `build_corpus()` regenerates the file from the running interpreter,
so the corpus is reproducible without any download; the shipped copy keeps it identical across Python versions.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

CORPUS_PATH = Path(__file__).with_name("corpus.txt.gz")


def build_corpus(path: Path = CORPUS_PATH) -> int:
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))
    data = text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip bytes reproducible.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(data)
    return len(data)


@lru_cache(maxsize=1)
def load_corpus_bytes() -> bytes:
    if not CORPUS_PATH.exists():
        build_corpus()
    with gzip.open(CORPUS_PATH, "rb") as f:
        return f.read()
