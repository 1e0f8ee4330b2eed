"""The root of APIS's own errors.

Every error APIS raises about bad input or a run directory's state derives from :class:`ApisError`, and its
message names the file, id or config key and what is wrong; the CLI prints such an error as one line
(``error: ...``) and shows a traceback only with ``--debug``. Anything else is a bug.
"""


class ApisError(Exception):
    """Bad input or a run directory in a state APIS cannot go on from; the message says which and why."""
