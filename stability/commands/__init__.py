"""One module per `stability` subcommand.

Each module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`. The CLI discovers them,
so adding a command never touches another command's file.
"""
