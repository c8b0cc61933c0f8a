"""The one exception type whose message is meant for the user, not for a traceback."""


class GemLightningError(Exception):
    """A problem the user can fix (a missing file, a bad setting).

    Entry points print the message alone and exit non-zero, so the message must say which file or key is
    at fault and what to do about it.
    """


def find_user_error(error: BaseException | None) -> GemLightningError | None:
    """The GemLightningError behind ``error``, if any.

    Hydra's ``instantiate`` re-raises whatever a constructor raises as an InstantiationException, with the
    original as ``__cause__``; entry points look through that chain so the user still sees one line.
    """
    while error is not None:
        if isinstance(error, GemLightningError):
            return error
        error = error.__cause__
    return None
