"""The runner's one error type: its message is what the user sees, followed by a non-zero exit."""


class RunnerError(Exception):
    """A problem the user can fix (bad input, unreachable server, invalid graph). ``exit_code`` is what the
    command line returns: 2 bad input or invalid graph, 3 server problems, 4 execution failed."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
