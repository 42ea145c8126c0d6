"""The errors sapt raises for what a user can fix: a bad setting, a run directory in use or damaged.

One base class, `SaptError`, so that the command line (exit 2, one line on stderr) and a program calling
`sapt.run` can tell a user's mistake from a bug in one `except` clause, whatever kind of mistake it is.

    SaptError                 a user error: its message says what is wrong and what to do
    ├── ConfigError           a bad key, value, config file or option (also a ValueError, as it always was)
    │   └── RunDirError       a run directory that cannot be used: locked by another process, damaged,
    │                         or not a run (an export, a foreign folder)

Why RunDirError is also a ConfigError. A held lock and a damaged stage were ConfigErrors before this class
existed, and programs (and this package's tests, dozens of them) catch ConfigError for them. Making it a
kind of ConfigError lets new code name the run-directory problem precisely while every `except ConfigError`
written so far keeps catching it; splitting the two apart would break those callers for no gain to them.
"""
from __future__ import annotations

__all__ = ["ConfigError", "RunDirError", "SaptError"]


class SaptError(Exception):
    """A user error: the message is complete and fit to print as one line."""


class ConfigError(SaptError, ValueError):
    """A bad key, value, config file or command-line option (importable from sapt.config, as always)."""


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked: held by another process, damaged, or not a run."""
