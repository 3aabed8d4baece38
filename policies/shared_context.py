"""The parts of two semantic texts that differ, once what they share is set aside (pure).

A sentence embedding is a mean over the text's tokens, so text two requests share pulls
their vectors together whatever else they say. Apps wrap the user's question in a
template or put retrieved context before it ("Context: ...\\n\\nQuestion: When was the
treaty signed?"), and there a different question moves the vector very little: with
16 tokens of shared context around labelled QQP pairs, the cosine threshold that
serves 0.5% of different questions serves 13%; with 64 tokens, 33%. Past the model's
maximum length (256 tokens for all-MiniLM-L6-v2) the question is cut off altogether
and two different questions embed to the same vector (`python -m bench.shared_context`).

The same holds for a segment on one side only: a QQP question with an instruction added
("Answer in French.", "Reply in JSON.") is within the threshold of the bare question a
third of the time, and 71% of the time behind 64 tokens of context.

`differing_parts(query, cached)` splits both texts into segments (lines, sentences,
"Label:" prefixes), sets aside the segments they have in common (a longest-matching
diff, in order) and the differing segments that are only fillers (greetings, thanks,
"Quick question:", "Can you tell me:"), and returns what remains of each. Where no
segment is shared, a long common beginning and end of words (a template run into the
question without punctuation) is set aside instead, all but a few words of it. The semantic
stage then requires the remainders to be as similar as the whole texts must be: the
similarity that counts is that of the parts that differ, and a part with nothing to
compare with (an instruction on one side only) is not similar. None when the texts share
nothing that counts (the whole texts are already the differing parts) or differ in nothing
but fillers.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher
from functools import lru_cache

__all__ = ["differing_parts", "segments"]

# A segment ends at a line break, or at sentence or clause punctuation followed by space.
_BOUNDARY = re.compile(r"(?<=[.!?;:\u3002\uff01\uff1f])\s+|\s*\n\s*")


# Words of greetings, thanks and question preambles: a segment of these alone changes no answer.
_FILLER_WORDS = frozenset("""
hi hello hey heya hiya yo greetings dear there all everyone everybody folks guys team
thanks thank thx ty tysm cheers regards best wishes appreciate appreciated advance much many lot very in
please pls plz kindly ok okay well so just also um uh hmm oh
quick honest honestly simple real seriously genuine question questions query ask asking asked
wondering wonder wondered curious know knowing like love would could can will you your me my i i'd i'm im
is it this that was be a an the of to for out help here are
tell answer explain say let's let
""".split())
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


SHARED_WORDS = 12
"""Shared words (a common beginning and end) that make text without segment boundaries
shared context: templates share this many, questions rarely (on QQP's pairs 12 changes no
decision; 8 lost 0.4-0.9 points of hits)."""
WINDOW = 2
"""Shared words kept beside the differing words: none loses reworded paraphrases ("learn
Python quickly" / "fast"), more lets the shared text back in."""


def _is_filler(segment: str) -> bool:
    return all(w in _FILLER_WORDS for w in _WORD.findall(segment.casefold()))


def segments(text: str) -> list[str]:
    return [s for s in (part.strip() for part in _BOUNDARY.split(text)) if s]


def _norm(segment: str) -> str:
    return " ".join(segment.split()).casefold()


@lru_cache(maxsize=8192)  # a paraphrase asked again meets the same candidate: pure, so computed once
def differing_parts(query: str, cached: str) -> tuple[str, str] | None:
    """(query's differing part, cached's differing part); None when the texts share nothing
    but fillers (and fewer than SHARED_WORDS words at their ends), or differ in nothing but fillers."""
    q, c = segments(query), segments(cached)
    matcher = SequenceMatcher(None, [_norm(s) for s in q], [_norm(s) for s in c], autojunk=False)
    q_rest: list[str] = []
    c_rest: list[str] = []
    shared = False
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            shared = shared or not all(_is_filler(seg) for seg in q[i1:i2])
        else:
            q_rest.extend(seg for seg in q[i1:i2] if not _is_filler(seg))
            c_rest.extend(seg for seg in c[j1:j2] if not _is_filler(seg))
    if not q_rest and not c_rest:
        return None
    if shared:
        return " ".join(q_rest), " ".join(c_rest)
    return _differing_words(" ".join(q_rest), " ".join(c_rest))


def _differing_words(query: str, cached: str) -> tuple[str, str] | None:
    """Text shared without a segment boundary (a template run into the question): the words
    between a common beginning and end of at least SHARED_WORDS words in all, with WINDOW
    shared words kept on each side so that a reworded tail still reads as a phrase."""
    a, b = query.split(), cached.split()
    fa, fb = [w.casefold() for w in a], [w.casefold() for w in b]
    shortest = min(len(a), len(b))
    head = 0
    while head < shortest and fa[head] == fb[head]:
        head += 1
    tail = 0
    while tail < shortest - head and fa[-1 - tail] == fb[-1 - tail]:
        tail += 1
    if head + tail < SHARED_WORDS or _is_filler(" ".join(a[head:len(a) - tail] + b[head:len(b) - tail])):
        return None  # too little shared, or what differs are fillers (or nothing: the same words)
    start, keep = max(0, head - WINDOW), min(tail, WINDOW)
    return " ".join(a[start:len(a) - tail + keep]), " ".join(b[start:len(b) - tail + keep])
