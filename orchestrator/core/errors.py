"""The one error type users see: a clear paragraph naming the field and the fix, never a traceback."""


class OrchError(Exception):
    """A user-facing failure. The CLI prints its message and exits non-zero."""

    exit_code = 2


class SpecError(OrchError):
    """A job or campaign spec is malformed or asks for something impossible."""


class NotFoundError(OrchError):
    """A job, campaign or checkpoint the user named does not exist."""

    exit_code = 3
