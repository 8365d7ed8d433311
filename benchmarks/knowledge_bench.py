"""The knowledge base: how long indexing a folder takes, and one search (SQLite FTS5, BM25).

For the shipped documents (the demo's refund and CRM policies) and for a synthetic corpus of
1,000 Markdown documents (5 sections of 3 paragraphs each, words drawn from a 5,000-word
vocabulary with a Zipf-like skew, fixed seed). Build is from the folder on disk (read, split,
insert), as a worker does at start and after a document changes. Prints p50 and p95.

    python -m benchmarks.knowledge_bench [--documents 1000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from countersign.guardrails.knowledge import (
    DEFAULT_KNOWLEDGE_PATH,
    KnowledgeIndex,
    open_index,
    read_folder,
)

QUERIES = [
    "the teapot arrived broken",
    "refund for a late delivery",
    "who approves a refund above 500",
    "change the customer's email address",
    "how many refunds per week",
    "reverse a refund made by mistake",
]


def percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return times[len(times) // 2], times[max(0, int(len(times) * 0.95) - 1)]


def time_ms(repeat: int, one: Callable[[int], object]) -> list[float]:
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        one(i)
        times.append((time.perf_counter() - start) * 1000)
    return times


def synthetic_corpus(folder: Path, documents: int, seed: int = 7) -> tuple[list[str], list[str]]:
    """Write `documents` Markdown files; return queries of content words (drawn uniformly,
    as a question's key words are) and queries of the corpus's most common words (the
    worst case: they match nearly every passage, and BM25 scores every match)."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    weights = [1 / (i + 1) for i in range(len(vocabulary))]

    def words(n: int) -> str:
        return " ".join(rng.choices(vocabulary, weights, k=n))

    for d in range(documents):
        parts = [f"# Document {d}: {words(3)}\n"]
        for s in range(5):
            parts.append(f"## Section {s} {words(2)}\n")
            parts.extend(f"{words(rng.randint(30, 80))}.\n" for _ in range(3))
        (folder / f"doc-{d:04d}.md").write_text("\n".join(parts))
    content = [" ".join(rng.sample(vocabulary[100:], rng.randint(2, 5))) for _ in range(200)]
    common = [words(rng.randint(2, 5)) for _ in range(200)]
    return content, common


def report(label: str, folder: Path, queries: list[str], builds: int, searches: int) -> None:
    documents = read_folder(folder)
    build = time_ms(builds, lambda i: KnowledgeIndex.build(folder, read_folder(folder)))
    index = open_index(folder)
    for q in queries[:20]:  # warm up
        index.search(q)
    search = time_ms(searches, lambda i: index.search(queries[i % len(queries)], 5))
    s50, s95 = percentiles(search)
    built = ""
    if build:
        b50, b95 = percentiles(build)
        built = f"build p50 {b50:8.1f} ms  p95 {b95:8.1f} ms   "
    print(
        f"{label:<42} {len(documents):>5} documents {len(index.passages):>6} passages   "
        f"{built:<41}search p50 {s50 * 1000:7.0f} µs  p95 {s95 * 1000:7.0f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1000)
    args = parser.parse_args()
    report("shipped (demo policies)", DEFAULT_KNOWLEDGE_PATH, QUERIES, builds=50, searches=2000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        content, common = synthetic_corpus(folder, args.documents)
        label = f"synthetic ({args.documents} docs)"
        report(label, folder, content, builds=5, searches=1000)
        report(label + ", common words", folder, common, builds=0, searches=200)


if __name__ == "__main__":
    main()
