"""`python -m poolctl`: the same as the `poolctl` command."""

from poolctl.cli.app import main

main()
