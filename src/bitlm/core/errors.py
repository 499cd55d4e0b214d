"""The one exception type the command-line tools turn into a one-line message."""

import contextlib
import time


class BitLMError(Exception):
    """A problem with the user's input (file, checkpoint, config value) rather than a bug.

    The CLIs print ``error: <message>`` on one line and exit with status 2 instead of a traceback,
    so the message must say what is wrong and, where possible, what to do about it.
    """


class TimeLimitExceeded(BitLMError):
    """Work given a deadline (``check_deadline``) ran past it: a server's generation limit."""


def check_deadline(deadline: float | None) -> None:
    """Raise ``TimeLimitExceeded`` once ``time.monotonic()`` has passed ``deadline`` (None: no
    limit). Long loops (sampling bits, denoising passes) call it once per iteration, so a limit
    stops the work itself instead of abandoning a thread that keeps computing."""
    if deadline is not None and time.monotonic() > deadline:
        raise TimeLimitExceeded("generation ran past its time limit; ask for fewer bytes")


@contextlib.contextmanager
def optional_dependencies(command: str, extra: str):
    """Imports inside the block that fail because an optional dependency is missing become one
    ``BitLMError`` naming the pip extra that provides it."""
    try:
        yield
    except ModuleNotFoundError as err:
        raise BitLMError(
            f"{command} needs {err.name}, which is not installed: pip install 'bitlm[{extra}]'"
        ) from err
