"""Errors meant for people: one clear message, and the exit code the CLI should use."""

from __future__ import annotations


class KerasViTError(Exception):
    """A failure the user can act on. ``exit_code`` is what the command line exits with."""

    exit_code = 1


class UserInputError(KerasViTError, ValueError):
    """Bad usage or bad input (wrong image size, missing file, unknown preset...): exit code 2."""

    exit_code = 2


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (a ``KeyboardInterrupt``), with where it stopped and what was kept.

    Attributes:
        epoch: the epoch (1-based) that was running, or ``None`` when every epoch had completed (the
            interruption came while testing or saving the model).
        epochs: the epochs asked for.
        completed: the completed epochs (a rerun resumes after them while the backup exists).
        backup_dir: where those epochs are backed up (``None`` without an output folder).
    """

    def __init__(self, epoch: int | None, epochs: int, completed: int, backup_dir: str | None):
        self.epoch, self.epochs, self.completed, self.backup_dir = epoch, epochs, completed, backup_dir
        super().__init__(self.describe())

    @property
    def resumable(self) -> bool:
        """Whether a rerun with the same output folder continues instead of starting over (Keras deletes the
        backup once every epoch has completed)."""
        return bool(self.completed and self.backup_dir and self.epoch is not None)

    def describe(self) -> str:
        if self.epoch is None:
            return (f"interrupted after the last of {self.epochs} epochs, before the model was tested and saved"
                    f"{'' if self.backup_dir is None else ' (a rerun starts over)'}")
        where = f"in epoch {self.epoch} of {self.epochs}"
        if self.resumable:
            done = f"{self.completed} completed epoch{'s' if self.completed != 1 else ''}"
            return f"interrupted {where}; {done} backed up in {self.backup_dir}"
        if self.backup_dir is None:
            return f"interrupted {where} (no output folder: nothing to resume)"
        return f"interrupted {where}, before the first epoch completed (a rerun starts over)"
