"""The knowledge base tool: search the business's own documents, to cite them.

Read-only: it touches no system of record, only the worker's index of the documents in
COUNTERSIGN_KNOWLEDGE_PATH (guardrails/knowledge.py).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from countersign.activities.tools import ToolContext, guarded_tool
from countersign.guardrails.knowledge import Citation, KnowledgeIndex, open_index
from countersign.settings import Settings


class KnowledgeSearchArgs(BaseModel):
    query: str = Field(min_length=1, max_length=300, description="What to look for, in plain words")
    limit: int = Field(default=5, ge=1, le=10, description="At most this many passages")


class FoundPassage(BaseModel):
    ref: str = Field(description="Cite it by writing [ref] in your reason")
    document: str
    section: str
    position: int
    text: str


class KnowledgeResults(BaseModel):
    passages: list[FoundPassage]
    index_version: str


def knowledge_index(settings: Settings) -> KnowledgeIndex:
    """The index of the configured folder (rebuilt when a document changed)."""
    return open_index(settings.knowledge_path)


@guarded_tool("knowledge.search", scope="knowledge:read", read_only=True)
async def search_knowledge(args: KnowledgeSearchArgs, ctx: ToolContext) -> KnowledgeResults:
    """Search the business's own documents (refund policy, CRM policy) for passages, best
    first. When a reason relies on a passage, cite it by writing its ref in square brackets,
    e.g. [refund-policy.md#limits:1]: approvers are shown the passage you cite."""
    index = await asyncio.to_thread(knowledge_index, ctx.runtime.settings)
    found = index.search(args.query, args.limit)
    return KnowledgeResults(
        passages=[
            FoundPassage(
                ref=p.ref, document=p.document, section=p.section, position=p.position, text=p.text
            )
            for p in found
        ],
        index_version=index.version,
    )


async def check_citations(settings: Settings, *texts: str) -> list[Citation]:
    """Every citation in the texts (e.g. a proposal's reason and its arguments' `reason`),
    each once, checked against the knowledge base."""
    index = await asyncio.to_thread(knowledge_index, settings)
    return index.cite("\n".join(texts))
