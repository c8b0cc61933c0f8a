"""The one exception type whose message is meant for the user, not for a traceback."""

import sys

from hydra.errors import HydraException


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


def exit_status_for(error: Exception) -> int:
    """For a command's ``except Exception``: print a user error as one line and return exit status 2.

    A user error is ours (wherever Hydra wrapped it) or a bad override (unknown key, wrong type), whose own
    Hydra message says which. Anything else is a bug and is raised again with its traceback.
    """
    user_error = find_user_error(error) or (error if isinstance(error, HydraException) else None)
    if user_error is None:
        raise error
    print(f"error: {user_error}", file=sys.stderr)
    return 2
