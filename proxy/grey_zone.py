"""What happens after a grey-zone miss has been answered and committed.

The L3 lookup of such a request left a grey-zone candidate (verified, above the consider
threshold, under its threshold). Once the pump has committed the request's fresh answer,
`after_commit` takes the candidate back and learns from the pair, off the request path:
the judge is asked when it is enabled and has room; otherwise, with calibration on, an
exact-match confirmation compares the two answers (`SemanticStage.confirm`). One label
per pair, never both.
"""
from __future__ import annotations

import asyncio
import logging

from cache.entry import Entry
from cache.semantic_stage import SemanticStage
from cache.tiered import TieredCache
from proxy.judge import Judge, JudgeJob, TokenBucket, credentials_of
from proxy.pump import FetchJob

log = logging.getLogger("stratacache.grey_zone")


class GreyZone:
    """Confirmations are sampled: at most `confirm_rate_per_s` a second and
    `confirm_concurrency` at once, so learning never queues ahead of serving on the
    embedder (a skipped pair only means one observation fewer)."""

    def __init__(self, *, cache: TieredCache, stage: SemanticStage, judge: Judge | None, confirm: bool,
                 confirm_rate_per_s: float = 5.0, confirm_concurrency: int = 1) -> None:
        self.cache = cache
        self.stage = stage
        self.judge = judge
        self.confirm = confirm
        self.bucket = TokenBucket(confirm_rate_per_s, max(1, int(confirm_rate_per_s)))
        self.concurrency = confirm_concurrency
        self.skipped = 0
        self._tasks: set[asyncio.Task] = set()

    def after_commit(self, job: FetchJob, entry: Entry) -> None:
        """Called by the pump right after a commit; only schedules work."""
        grey = self.stage.take_grey(entry.meta.partition, entry.meta.semantic_text)
        if grey is None:
            return
        d = job.decision
        if self.judge is not None and self.judge.submit(
                JudgeJob(grey=grey, key=d.keys.key, model=d.model, credentials=credentials_of(job.headers))):
            return
        if self.confirm:
            if len(self._tasks) >= self.concurrency or not self.bucket.try_take():
                self.skipped += 1
                return
            task = asyncio.get_running_loop().create_task(self.stage.confirm(self.cache, grey, entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.judge is not None:
            await self.judge.aclose()
