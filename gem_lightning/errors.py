"""The one exception type whose message is meant for the user, not for a traceback."""


class GemLightningError(Exception):
    """A problem the user can fix (a missing file, a bad setting).

    Entry points print the message alone and exit non-zero, so the message must say which file or key is
    at fault and what to do about it.
    """
