"""The one exception type of the evaluation tools: a one-line, actionable message that names the file."""
from __future__ import annotations


class EvaluationError(RuntimeError):
    """Bad input (missing/odd files, mismatching geometry, invalid probabilities or labels).

    The message is a single line that names the offending file and says what to do; the command line prints it
    as ``nnunet-losses <command>: error: <message>`` and exits with status 2. Nothing has been written when it is
    raised (outputs go to a temporary folder that is moved into place only at the very end).
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
