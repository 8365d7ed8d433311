"""`python -m countersign.workers …` is `countersign …`."""

from countersign.workers.cli import main

main()
