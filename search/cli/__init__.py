"""What every entry point shares (:mod:`~search.cli.entry`): the environment set before Ray or
MLflow is imported, the output flags, and bad input as one line with exit status 2."""
