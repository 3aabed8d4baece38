"""Benchmark input data: labelled pairs, conversations, and where development data lives.

Nothing here knows what is in a particular file: loaders read the shapes described in
`../shared/data/README.md` (pairs as CSV `question1,question2,is_duplicate` or JSONL
`{"a", "b", "label"}`; conversations as JSON lists of `u0/u0_duplicate/system_q0/u1/...`
or `Main Query/Main Query Response/Follow-Up Query` objects).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Column names accepted for the two texts and the label, first match wins.
_A_COLUMNS = ("a", "question1", "text_a", "sentence1", "q1")
_B_COLUMNS = ("b", "question2", "text_b", "sentence2", "q2")
_LABEL_COLUMNS = ("label", "is_duplicate", "same", "duplicate")


class DataError(ValueError):
    """A data file is missing or not in a shape this module reads."""


@dataclass(frozen=True, slots=True)
class Pair:
    """Two texts and whether they mean the same thing (label 1) or not (label 0)."""

    a: str
    b: str
    label: int


@dataclass(frozen=True, slots=True)
class Conversation:
    """A first question, its answer, and a follow-up that depends on it.

    `first_paraphrase` / `follow_up_paraphrase` are the same questions reworded, when known."""

    first: str
    answer: str
    follow_up: str
    first_paraphrase: str | None = None
    follow_up_paraphrase: str | None = None


def resolve_data_path(path: str | Path) -> Path:
    """An existing file for `path`: as given (absolute or relative to the working
    directory), else relative to the repository root, else under the shared data directory."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p, SHARED_DATA / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    raise DataError(f"data not found: {path} (looked in {', '.join(str(c.parent) for c in candidates)})")


def _pick(row: dict, names: tuple[str, ...], path: Path) -> str:
    for n in names:
        if n in row:
            return n
    raise DataError(f"{path}: none of the columns {names} found (have {sorted(row)})")


def _label(value: object, path: Path) -> int:
    if isinstance(value, bool):
        return int(value)
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "yes", "same", "duplicate"):
        return 1
    if text in ("0", "0.0", "false", "no", "different"):
        return 0
    raise DataError(f"{path}: label {value!r} is not 0/1")


def load_pairs(path: str | Path) -> list[Pair]:
    """Labelled pairs from CSV (header row) or JSONL, in file order; rows with an empty
    text are skipped."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"pairs file not found: {p}")
    rows: list[dict]
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif p.suffix.lower() == ".json":
        rows = json.loads(p.read_text(encoding="utf-8"))
    else:
        with p.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    if not rows:
        return []
    ka, kb, kl = (_pick(rows[0], names, p) for names in (_A_COLUMNS, _B_COLUMNS, _LABEL_COLUMNS))
    out = []
    for row in rows:
        a, b = str(row.get(ka) or "").strip(), str(row.get(kb) or "").strip()
        if a and b:
            out.append(Pair(a, b, _label(row.get(kl), p)))
    return out


def _conversation(obj: dict) -> Conversation | None:
    if "u0" in obj and "u1" in obj:
        return Conversation(first=obj["u0"], answer=obj.get("system_q0") or "", follow_up=obj["u1"],
                            first_paraphrase=obj.get("u0_duplicate"),
                            follow_up_paraphrase=obj.get("u1_duplicate"))
    if "Main Query" in obj and "Follow-Up Query" in obj:
        return Conversation(first=obj["Main Query"], answer=obj.get("Main Query Response") or "",
                            follow_up=obj["Follow-Up Query"])
    return None


def load_conversations(path: str | Path) -> list[Conversation]:
    """Conversations from one JSON file (a list of objects in either known shape)."""
    p = Path(path)
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list")
    out = [c for c in (_conversation(o) for o in data if isinstance(o, dict)) if c is not None]
    if not out:
        raise DataError(f"{p}: no conversations in a known shape")
    return out


def load_texts(path: str | Path) -> list[str]:
    """A JSON list of strings (e.g. generic follow-ups such as "Can you expand on that?")."""
    p = Path(path)
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
        raise DataError(f"{p}: expected a JSON list of strings")
    return [t.strip() for t in data if t.strip()]
