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
from proxy.judge import Judge, JudgeJob, credentials_of
from proxy.pump import FetchJob

log = logging.getLogger("stratacache.grey_zone")


class GreyZone:
    def __init__(self, *, cache: TieredCache, stage: SemanticStage, judge: Judge | None, confirm: bool) -> None:
        self.cache = cache
        self.stage = stage
        self.judge = judge
        self.confirm = confirm
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
