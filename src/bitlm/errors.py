"""The one exception type the command-line tools turn into a one-line message."""


class BitLMError(Exception):
    """A problem with the user's input (file, checkpoint, config value) rather than a bug.

    The CLIs print ``error: <message>`` on one line and exit with status 2 instead of a traceback,
    so the message must say what is wrong and, where possible, what to do about it.
    """
