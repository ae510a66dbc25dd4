"""The one error type for mistakes a user can make (bad snapshot, unknown model or profile, bad config).

The CLI prints its message on one line and exits 2; nothing a user types should surface as a traceback.
"""

from pydantic import ValidationError
from pydantic_core import ErrorDetails


class MigoptError(ValueError):
    """A user-caused error whose message names the field and the value at fault."""


def first_problem(err: ValidationError, default: str) -> tuple[str, str]:
    """(where, message) of a pydantic error's first problem, for a one-line `MigoptError`: where is the dotted
    location (`default` at the top level), message without pydantic's "Value error, " prefix."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or default
    return where, problem_message(first)


def problem_message(problem: ErrorDetails) -> str:
    """A pydantic problem's message, without its "Value error, " prefix; an unknown field of a dataclass (which
    pydantic calls an unexpected keyword argument) reads as one of a model does."""
    if problem["type"] == "unexpected_keyword_argument":
        return "Extra inputs are not permitted"
    return str(problem["msg"]).removeprefix("Value error, ")
