"""Countersign: durable, human-countersigned automation on Temporal and LangGraph.

The one import name Countersign claims. The repository keeps the card's folders (`agents/`,
`activities/`, `guardrails/`, `workers/`, `demo/`) at its root; they are this package's
subpackages (`countersign.agents`, ...), linked here, so nothing installs under their bare names.
"""
