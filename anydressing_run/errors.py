"""The runner's error types: a RunnerError's message is what the user sees, followed by a non-zero exit."""


class RunnerError(Exception):
    """A problem the user can fix (bad input, unreachable server, invalid graph). ``exit_code`` is what the
    command line returns: 2 bad input, invalid graph or a node error before sampling, 3 server problems,
    4 the run failed later. ``details`` (a server traceback, say) is shown only with ``--verbose``."""

    def __init__(self, message: str, exit_code: int = 2, details: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.details = details


class Cancelled(KeyboardInterrupt):
    """SIGTERM, turned into the same unwinding as Ctrl-C (SIGINT) so both cancel the run on the server."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum
