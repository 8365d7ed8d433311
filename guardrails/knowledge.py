"""The knowledge base: the business's own documents, searchable, and citable by passage.

    index = open_index(Path("demo/knowledge"))
    index.search("item arrived broken", limit=3)   # -> [Passage, ...], best first (BM25)
    index.resolve("refund-policy.md#damaged-or-defective-items:1")   # -> Passage | None
    index.cite("Full refund [refund-policy.md#damaged-or-defective-items:1]")  # -> [Citation]

A folder of Markdown files is split into passages: by section (a `#`/`##`/`###` heading; the
text before the first heading belongs to the document's title) and by position in it (one
paragraph or list per passage, counted from 1). A passage's `ref` is
`<document>#<section anchor>:<position>`, stable while the document keeps its headings and
paragraphs. The agent cites a passage by writing `[ref]` (or `[ref@version]`, pinning the
passage text it read) in its reason; a citation that names no passage of the index is
flagged, and so is one whose pinned text has changed since.

Retrieval is SQLite FTS5 with BM25 ranking (the standard library's sqlite3, in memory): no
service, no model, no network. The index is derived from the folder and versioned by a hash
of its contents; `open_index` rebuilds it when a file is added, removed or changed. Each
worker builds its own from its own copy of the folder (a deployment ships the same folder to
every worker, like the policy); what an approval showed is recorded in the audit trail with
the passage text and the index version, so it stays readable after the documents change.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "DEFAULT_KNOWLEDGE_PATH",
    "Citation",
    "KnowledgeError",
    "KnowledgeIndex",
    "Passage",
    "citations_in",
    "open_index",
]

# `[document.md#section:position]`, optionally `@version`: anything that looks like one is a
# citation, so a made-up section or document is flagged rather than ignored.
CITATION = re.compile(r"\[(?P<ref>[^\[\]\s#]+\.md#[^\[\]\s]+?)\]")
_REF = re.compile(r"^(?P<document>[^#\s]+)#(?P<anchor>[a-z0-9-]+):(?P<position>\d+)$")
_HEADING = re.compile(r"^(?P<level>#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
_WORD = re.compile(r"\w+", re.UNICODE)
VERSION_CHARS = 12
# The demo business's documents (its refund and CRM policies), shipped with the package.
DEFAULT_KNOWLEDGE_PATH = Path(__file__).resolve().parent.parent / "demo" / "knowledge"


class KnowledgeError(Exception):
    """The knowledge folder cannot be read. The message names the path and what to fix."""


class Passage(BaseModel):
    """One paragraph (or list) of one section of one document."""

    model_config = ConfigDict(frozen=True)

    document: str  # path inside the folder, e.g. refund-policy.md
    title: str  # the document's first heading
    section: str  # the heading the passage sits under
    anchor: str  # that heading as a URL fragment (GitHub style)
    position: int  # 1 = the section's first paragraph
    text: str
    version: str  # hash of the text: changes when the passage is edited

    @property
    def ref(self) -> str:
        return f"{self.document}#{self.anchor}:{self.position}"

    @property
    def marker(self) -> str:
        """What the agent writes to cite this passage."""
        return f"[{self.ref}]"


class Citation(BaseModel):
    """A citation the agent wrote, checked against the index.

    resolved: the ref names a passage (and, if pinned with @version, its text is unchanged);
    changed: the passage exists but its text is not the version cited;
    unresolved: no such passage — a fabricated or mistyped citation."""

    ref: str
    status: Literal["resolved", "changed", "unresolved"]
    passage: Passage | None
    index_version: str

    @property
    def flagged(self) -> bool:
        return self.status != "resolved"

    def line(self) -> str:
        """The citation in one line, as an approver reads it."""
        p = self.passage
        if p is None:
            return f"[{self.ref}] DOES NOT RESOLVE: no such passage in the knowledge base"
        where = f"{p.title}, {p.section}, paragraph {p.position}"
        flag = " (CHANGED since it was cited)" if self.status == "changed" else ""
        return f"[{self.ref}] {where}{flag}: “{p.text}”"


def citations_in(text: str) -> list[str]:
    """The refs cited in a text (`[doc.md#section:n]` markers), in order, each once."""
    return list(dict.fromkeys(m.group("ref") for m in CITATION.finditer(text or "")))


def slug(title: str) -> str:
    """A heading as a GitHub-style anchor: lower case, punctuation dropped, spaces to dashes."""
    kept = re.sub(r"[^\w\- ]", "", title.strip().lower(), flags=re.UNICODE)
    return re.sub(r"[\s_]+", "-", kept).strip("-") or "section"


def split_passages(document: str, markdown: str) -> list[Passage]:
    """A Markdown document's passages: by heading, then by paragraph (blank-line separated)."""
    passages: list[Passage] = []
    title = Path(document).stem
    section, anchor = title, slug(title)
    seen: dict[str, int] = {}
    block: list[str] = []
    position = 0
    fenced = False

    def flush() -> None:
        nonlocal position
        text = " ".join(line.strip() for line in block).strip()
        block.clear()
        if text:
            position += 1
            passages.append(
                Passage(
                    document=document,
                    title=title,
                    section=section,
                    anchor=anchor,
                    position=position,
                    text=text,
                    version=hashlib.sha256(text.encode()).hexdigest()[:VERSION_CHARS],
                )
            )

    first_heading = True
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(line)
        if heading:
            flush()
            section = heading.group("title")
            if first_heading:
                title = section
                first_heading = False
            base = slug(section)
            # Repeated headings get -1, -2, ... as GitHub does, so every anchor is unique.
            count = seen.get(base, 0)
            seen[base] = count + 1
            anchor = base if count == 0 else f"{base}-{count}"
            position = 0
        elif line.strip():
            # A list item starts a new line in the passage's text but not a new passage.
            block.append(line)
        else:
            flush()
    flush()
    return passages


# Words that match nearly every passage: they add little to the ranking and cost the most
# (BM25 scores every passage a query word matches). Dropped unless the query is only these.
_STOPWORD_TEXT = (
    "a an and are as at be by can do does for from has have how i if in is it its may my of on "
    "or our should so than that the their them then there these they this to was we what when "
    "where which who why will with you your"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _fts_query(query: str) -> str:
    """Free text as an FTS5 query: its words, any of them (BM25 ranks), quoted so that no
    word is read as an operator."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(query)))
    words = [w for w in words if w not in _STOPWORDS] or words
    return " OR ".join(f'"{w}"' for w in words)


@dataclass
class KnowledgeIndex:
    """The passages of a folder of Markdown documents, in an in-memory FTS5 table."""

    folder: Path
    version: str = ""
    passages: dict[str, Passage] = field(default_factory=dict)
    _db: sqlite3.Connection = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, folder: Path, documents: dict[str, str]) -> KnowledgeIndex:
        """Index documents given as {path inside the folder: Markdown text}."""
        index = cls(folder=folder)
        digest = hashlib.sha256()
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.execute(
            "CREATE VIRTUAL TABLE passages USING fts5("
            "ref UNINDEXED, section, text, tokenize='porter unicode61')"
        )
        rows = []
        for name in sorted(documents):
            digest.update(f"{name}\0{documents[name]}\0".encode())
            for p in split_passages(name, documents[name]):
                index.passages[p.ref] = p
                rows.append((p.ref, f"{p.title} {p.section}", p.text))
        db.executemany("INSERT INTO passages(ref, section, text) VALUES (?, ?, ?)", rows)
        db.commit()
        index._db = db
        index.version = digest.hexdigest()[:VERSION_CHARS]
        return index

    def search(self, query: str, limit: int = 5) -> list[Passage]:
        """The passages best matching the words of `query`, best first (BM25; a word in the
        section heading counts twice as much as one in the text)."""
        match = _fts_query(query)
        if not match or limit < 1:
            return []
        with self._lock:
            refs = self._db.execute(
                "SELECT ref FROM passages WHERE passages MATCH ? "
                "ORDER BY bm25(passages, 0.0, 2.0, 1.0) LIMIT ?",
                (match, limit),
            ).fetchall()
        return [self.passages[ref] for (ref,) in refs]

    def resolve(self, ref: str) -> Passage | None:
        """The passage a ref names (a pinned `@version` is ignored here), or None."""
        return self.passages.get(ref.split("@", 1)[0])

    def check(self, ref: str) -> Citation:
        """One cited ref, checked: does it name a passage, and is it the text that was cited?"""
        base, _, pinned = ref.partition("@")
        passage = self.passages.get(base) if _REF.match(base) else None
        status: Literal["resolved", "changed", "unresolved"] = "resolved"
        if passage is None:
            status = "unresolved"
        elif pinned and pinned != passage.version:
            status = "changed"
        return Citation(ref=ref, status=status, passage=passage, index_version=self.version)

    def cite(self, text: str) -> list[Citation]:
        """Every citation in a text (an agent's reason), checked."""
        return [self.check(ref) for ref in citations_in(text)]


def read_folder(folder: Path) -> dict[str, str]:
    """Every Markdown file under `folder`, by its path inside it."""
    if not folder.is_dir():
        raise KnowledgeError(
            f"knowledge folder {folder} does not exist or is not a folder "
            "(set COUNTERSIGN_KNOWLEDGE_PATH to a folder of Markdown documents)"
        )
    documents = {}
    for path in sorted(folder.rglob("*.md")):
        name = path.relative_to(folder).as_posix()
        try:
            documents[name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise KnowledgeError(f"knowledge document {path} cannot be read as UTF-8: {e}") from e
    return documents


def _signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    if not folder.is_dir():
        return ()
    return tuple(
        (p.relative_to(folder).as_posix(), p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(folder.rglob("*.md"))
    )


_cache: dict[Path, tuple[tuple[tuple[str, int, int], ...], KnowledgeIndex]] = {}
_cache_lock = threading.Lock()


def open_index(folder: Path) -> KnowledgeIndex:
    """The index of a folder, built once and rebuilt when a document is added, removed or
    changed (checked on every call: a stat of each file)."""
    key = folder.resolve()
    signature = _signature(key)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        index = KnowledgeIndex.build(key, read_folder(key))
        _cache[key] = (signature, index)
        return index
