"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class CaptionError(Exception):
    """A problem the user can act on; its message names the problem and what to do."""
