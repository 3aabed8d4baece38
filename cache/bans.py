"""The local view of active bans, checked on every hit (lazy invalidation)."""
from __future__ import annotations

from cache.entry import Entry
from policies.invalidation import Ban, ban_matches


def matches(ban: Ban, entry: Entry) -> bool:
    m = entry.meta
    return ban_matches(ban, created_at=entry.created_at, tags=m.tags, model=m.model, namespace=m.namespace,
                       tenant=m.tenant, request_digest=m.request_digest)


class BanList:
    def __init__(self) -> None:
        self._bans: dict[str, Ban] = {}

    def add(self, ban: Ban) -> None:
        self._bans[ban.id] = ban

    def blocks(self, entry: Entry) -> bool:
        if not self._bans:
            return False
        return any(matches(b, entry) for b in self._bans.values())

    def prune(self, now: float, max_entry_lifetime_s: float) -> None:
        """Drop bans older than any entry can live: nothing they match can still exist."""
        for bid, b in list(self._bans.items()):
            if b.issued_at + max_entry_lifetime_s < now:
                del self._bans[bid]

    def __len__(self) -> int:
        return len(self._bans)

    def __iter__(self):
        return iter(list(self._bans.values()))
