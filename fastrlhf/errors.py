"""Errors the user can act on, and the exit codes of the `fastrlhf` command.

The command prints such an error as one line on stderr and exits with its code; anything else is an
internal error (a bug): its traceback, exit code 1. FASTRLHF_DEBUG=1 prints the traceback in every case.
  0  done
  1  internal error
  2  bad input or environment: an option, a config or data file, a model path, a run directory in use,
     a full disk (nothing is written to `final`)
  3  the guard stopped a diverging run
"""
import argparse
import contextlib
import errno


class UserError(Exception):
    """Something the user can fix (the message says what and where)."""
    exit_code = 2


class ConfigError(UserError, ValueError):
    """A bad option: the message names the option, its value and where it was set."""


class DiskFull(UserError):
    """A write failed because the device is full."""


class Stopped(UserError):
    """The guard stopped a diverging run; the message says which checkpoint, if any, is left."""
    exit_code = 3


def disk_full(error):
    """Whether `error`, or one it was raised from, is a full device (torch.save and safetensors wrap the OSError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def writing(path, then=""):
    """Turns a write that fails on a full device into DiskFull naming `path` (and what to do `then`)."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as error:
        if not disk_full(error):
            raise
        raise DiskFull(f"no space left on the device while writing {path}{then}") from error


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors: one line, exit code 2, like every other bad input."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")
