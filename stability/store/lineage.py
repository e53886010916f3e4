"""Which metric rows a run's rollbacks abandoned.

A rollback restores a checkpoint and trains from its step again, so the steps between the checkpoint and the
rollback are logged twice: once on the branch the rollback abandoned, once on the branch that replaces it.
The writer numbers branches (every row carries its `branch`) and records each rewind in run.json as
`{"branch": b, "resume_step": s}`: branch b logs the run again from step s on. A row of branch b at step t is
on the run's lineage unless some later branch b' > b resumed at or before t. Readers keep the lineage by default;
abandoned rows stay on disk and are read with `branches="all"`.
"""

from __future__ import annotations

NO_CUTOFF = 2 ** 63 - 1


def rewinds_of(meta: dict) -> list[tuple[int, int]]:
    """(branch, resume_step) pairs from a run's metadata, by branch; entries that are not two integers are
    ignored (run.json is ours, but a hand-edited file must not break reading)."""
    out = []
    for r in meta.get("rewinds") or ():
        try:
            out.append((int(r["branch"]), int(r["resume_step"])))
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(out)


def cutoffs(rewinds: list[tuple[int, int]]) -> list[int] | None:
    """cutoffs[b]: the rows of branch b are on the lineage while step < cutoffs[b]. None: the run never rewound."""
    if not rewinds:
        return None
    out, later = [], NO_CUTOFF
    top = max(b for b, _ in rewinds)
    resume = dict(rewinds)
    for b in range(top, -1, -1):  # from the newest branch back: each is cut where any later one resumed
        out.append(later)
        if b in resume:
            later = min(later, resume[b])
    return out[::-1]


def lineage_sql(src: str, abandoned: bool = False) -> str:
    """`src` (metric rows or events: a relation with step and branch columns) without the rows a rollback abandoned
    (with `abandoned`: only those); takes the cutoffs list as its one parameter. A branch newer than the cutoffs
    list (its rewind not yet read) is on the lineage."""
    keep = f"step < coalesce(list_extract(?::BIGINT[], branch + 1), {NO_CUTOFF})"
    return f"(SELECT * FROM {src} WHERE {'NOT ' if abandoned else ''}{keep})"
