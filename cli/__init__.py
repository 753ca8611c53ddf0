"""The `azr` command line: `cli.main.app`, wired from one module per group of commands."""
