"""`python -m countersign …` is `countersign …`."""

from countersign.workers.cli import main

main()
