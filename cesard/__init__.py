"""cesard: a transcription daemon fed through a filesystem spool."""

__version__ = "0.1.0"
