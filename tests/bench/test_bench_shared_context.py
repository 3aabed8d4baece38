"""bench.shared_context: what counts as served without and with the shared-context check."""
from __future__ import annotations

import numpy as np

from bench.shared_context import LAYOUTS, served


class AxisEmbeddings:
    """Texts with the shared context embed alike; any other text gets its own axis."""

    def __init__(self) -> None:
        self.axes: dict[str, int] = {}

    def encode(self, texts):
        out = np.zeros((len(texts), 64), np.float32)
        for row, text in enumerate(texts):
            if text.startswith("Context:"):
                out[row, 0] = 1.0
            else:
                out[row, 1 + self.axes.setdefault(text, len(self.axes))] = 1.0
        return out


def test_a_different_question_behind_shared_context_is_served_only_without_the_check():
    wrap = LAYOUTS["context"]
    cached = wrap("What is the capital of Peru? How tall is Everest?", "When was the treaty signed?")
    asked = wrap("What is the capital of Peru? How tall is Everest?", "Which war did the treaty end?")
    assert served(AxisEmbeddings(), asked, cached, 0.944) == (True, False)
    assert served(AxisEmbeddings(), cached, cached + " Thanks!", 0.944) == (True, True)
    assert served(AxisEmbeddings(), cached + " Reply in JSON.", cached, 0.944) == (True, False)
