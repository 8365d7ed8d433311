"""`python -m workers …` is `countersign …` (keeps the repo root first on the path)."""

from workers.cli import main

main()
