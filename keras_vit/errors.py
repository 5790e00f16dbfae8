"""Errors meant for people: one clear message, and the exit code the CLI should use."""

from __future__ import annotations


class KerasViTError(Exception):
    """A failure the user can act on. ``exit_code`` is what the command line exits with."""

    exit_code = 1


class UserInputError(KerasViTError, ValueError):
    """Bad usage or bad input (wrong image size, missing file, unknown preset...): exit code 2."""

    exit_code = 2
