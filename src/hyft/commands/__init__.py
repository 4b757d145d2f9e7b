"""One module per `hyft` command: add_arguments(parser) and run(args, rest)."""
