"""`python -m workers …` is `countersign …`."""

from workers.cli import main

main()
