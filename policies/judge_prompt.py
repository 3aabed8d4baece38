"""The off-path judge's question and how its answer is read (pure; no I/O).

The judge is the upstream model itself, asked with temperature 0 and at most 3 tokens
whether two user turns ask for the same information. Only a first word of "yes" or "no"
counts; anything else (a refusal, a reasoning preamble, an empty answer) is `None`:
no verdict, no evidence, no alias.
"""
from __future__ import annotations

import re

QUESTION = ("Do these two questions ask for the same information, so that one answer serves both? "
            "Answer yes or no.")
SYSTEM = "You compare two user questions. Reply with one word: yes or no."
MAX_TEXT_CHARS = 2000
"""Each question is cut to this many characters: the judge's prompt stays small."""

_FIRST_WORD = re.compile(r"[a-z]+")


def judge_body(model: str, cached: str, query: str) -> dict:
    """The /v1/chat/completions request body for one pair."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Question 1: {cached[:MAX_TEXT_CHARS]}\n"
                                        f"Question 2: {query[:MAX_TEXT_CHARS]}\n\n{QUESTION}"},
        ],
        "temperature": 0,
        "max_tokens": 3,
        "stream": False,
    }


def read_verdict(response: object) -> bool | None:
    """True for yes, False for no, None when the response says neither."""
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    msg = choices[0].get("message")
    text = msg.get("content") if isinstance(msg, dict) else choices[0].get("text")
    if not isinstance(text, str):
        return None
    m = _FIRST_WORD.search(text.strip().lower())
    if m is None or m.start() > 2:  # "yes", "Yes.", "**yes**"; not "I think yes"
        return None
    word = m.group(0)
    if word == "yes":
        return True
    if word == "no":
        return False
    return None
