"""The one exception type the command line turns into a one-line message and exit code 2."""


class SSLProbeError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do.

    The CLI prints ``error: <message>`` on one line and exits with code 2 (no traceback unless
    ``--debug``). Library callers can catch it like any other exception.
    """
