"""The running batch of the reference backend: its rows and their left-padded KV cache.

Rows are always left-padded: a row joins with its own unpadded prefill cache, and both
sides are padded on the left with zeros to the common length; every decode step appends
one column on the right. The 2-D mask (1 = real token) hides the padding, and a row's
position is its count of real tokens, so a row computes what it would compute alone.
Only plain `DynamicLayer` caches (`.keys` / `.values` of [batch, heads, length, dim]) can be
merged this way. Touched by the engine's worker thread only.
"""
from __future__ import annotations

from typing import Any, Generic, TypeVar

import torch

R = TypeVar("R")


def pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class RunningBatch(Generic[R]):
    def __init__(self) -> None:
        self.rows: list[R] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, cache length], 1 = real token

    def add(self, rows: list[R], cache: Any, mask: torch.Tensor) -> None:
        """Append rows with their own cache (same row count as `rows`) and mask."""
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        have, new = self.mask.shape[1], mask.shape[1]
        width = max(have, new)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([pad_left(mine.keys, width - have, -2),
                                   pad_left(theirs.keys, width - new, -2)])
            mine.values = torch.cat([pad_left(mine.values, width - have, -2),
                                     pad_left(theirs.values, width - new, -2)])
        self.mask = torch.cat([pad_left(self.mask, width - have, -1),
                               pad_left(mask, width - new, -1)])
        self.rows.extend(rows)

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at `keep`, then drop padding columns no row needs."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask.index_select(0, idx)
        lead = int((self.mask.cumsum(-1) == 0).sum(-1).min())
        self.mask = self.mask[:, lead:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[..., lead:, :]
            layer.values = layer.values.index_select(0, idx)[..., lead:, :]

    def decode_inputs(self, last_tokens: list[int], device: torch.device) -> dict[str, Any]:
        """Forward kwargs for one decode step feeding each row its last token."""
        mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
        return {"input_ids": torch.tensor([[t] for t in last_tokens], device=device),
                "attention_mask": mask, "position_ids": self.mask.sum(-1, keepdim=True),
                "past_key_values": self.cache, "use_cache": True}

    def stepped(self, cache: Any, attention_mask: torch.Tensor) -> None:
        """Record the cache and mask after a decode step."""
        self.cache, self.mask = cache, attention_mask
