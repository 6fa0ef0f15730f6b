"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class DgmError(Exception):
    """An error caused by user input (bad config, missing file, bad argument)."""


class TrainingDiverged(DgmError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


class TrackingUnreachable(DgmError):
    """The MLflow tracking server stopped answering (after MLflow's bounded retries)."""
