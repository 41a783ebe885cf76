"""The one exception type a user ever sees as a message instead of a traceback."""


class EdgefleetError(Exception):
    """A user-facing error: bad input, missing tool, wrong board. The CLI prints it and exits 2.

    Everything else that escapes is a bug in edgefleet and keeps its traceback.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base
