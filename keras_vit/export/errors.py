"""Errors of the export pipeline: what went wrong, in one sentence, with the exit code to use."""

from __future__ import annotations

from keras_vit.errors import KerasViTError, UserInputError

__all__ = ["ExportVerificationError", "KerasViTError", "UserInputError", "error_from_exit_code"]


class ExportVerificationError(KerasViTError):
    """The exported file does not compute what the Keras model computes (exit code 1); no file is left."""

    exit_code = 1


def error_from_exit_code(message: str, exit_code: int) -> KerasViTError:
    """Rebuild the error a child export process reported, keeping its message and exit code."""
    if exit_code == UserInputError.exit_code:
        return UserInputError(message)
    if message.startswith("export does not match") or "agreement" in message:
        return ExportVerificationError(message)
    return KerasViTError(message)
