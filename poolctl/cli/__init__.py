"""The `poolctl` command line; see poolctl.cli.app."""
