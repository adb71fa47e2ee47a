"""One exit-status convention for every subcommand, and the one-line error messages behind it.

0: done. 1: bad input the user can fix -- a missing or damaged file, a dataset id in use, an output location that
cannot be written (no permission, disk full): one line ``nnunet-losses CMD: error: MESSAGE`` on stderr, no
traceback. 2: a usage error -- an unknown flag, an invalid value, options that do not go together: argparse's usage
line plus the one-line message.

Which exceptions are "bad input": ``ValueError`` (the domain functions validate their arguments with it) and
``OSError`` (files and folders) for every subcommand, plus the domain's own error types that a subcommand lists in
``user_errors`` (``parser.set_defaults(user_errors=(EvaluationError,))``). Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys

EXIT_OK, EXIT_USER_ERROR, EXIT_USAGE = 0, 1, 2

EXIT_STATUS_HELP = ("exit status: 0 done; 1 bad input you can fix (missing file, used dataset id, unwritable or "
                    "full output location), printed as one line 'nnunet-losses COMMAND: error: ...'; 2 usage "
                    "error (unknown flag, invalid value).")

#: what every subcommand reports as a user-fixable error
USER_ERRORS = (ValueError, OSError)


class UsageError(Exception):
    """Options that do not go together (exit status 2), raised where argparse alone cannot tell."""


def one_line(message) -> str:
    return " ".join(str(message).split())


def describe(error: BaseException) -> str:
    """The message of ``error`` on one line; file-system errors say which location and what to do."""
    if isinstance(error, OSError) and error.errno is not None and error.filename is not None:
        what = {errno.EACCES: "no permission to write", errno.EPERM: "no permission to write",
                errno.ENOSPC: "no space left on the device of", errno.EROFS: "read-only file system at",
                errno.EDQUOT: "disk quota exceeded at"}.get(error.errno)
        if what:
            return f"{what} {error.filename}: choose another output location or free it"
    return one_line(error) or type(error).__name__


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; map its failures onto the exit statuses above."""
    prog = f"nnunet-losses {args.command}"
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `nnunet-losses losses | head`: the reader left; not an error to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's recipe: no second error at exit
        return EXIT_USER_ERROR
    except UsageError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except USER_ERRORS + tuple(getattr(args, "user_errors", ())) as e:
        print(f"{prog}: error: {describe(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
