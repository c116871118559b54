"""`python -m recbrew.cli`: the same as the `recbrew` command."""

from recbrew.cli import main

main()
