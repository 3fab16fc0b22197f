"""The ``purifier`` command line: one sub-command per user job, each a thin call into a package."""
