"""The one error type for mistakes a user can make (bad snapshot, unknown model or profile, bad config).

The CLI prints its message on one line and exits 2; nothing a user types should surface as a traceback.
"""


class MigoptError(ValueError):
    """A user-caused error whose message names the field and the value at fault."""
