"""The configuration in force. SIGHUP swaps it (:meth:`Settings.replace`); every part
reads ``settings.cfg`` when it acts, so a reload reaches them all at once."""

from __future__ import annotations

from cesard import config as configmod
from cesard import models


class Settings:
    def __init__(self, cfg: configmod.Config) -> None:
        self.cfg = cfg
        self.model_infos: list[models.ModelInfo] = []
        self.english_only: set[str] = set()
        self.multilingual: str | None = None  # where a job with no model falls back to
        self.replace(cfg)

    def replace(self, cfg: configmod.Config) -> None:
        """Take ``cfg`` (already checked) and what it says of the models."""
        self.cfg = cfg
        self.model_infos = models.describe(cfg.model_dirs)
        self.english_only = {m.name for m in self.model_infos if m.english_only}
        self.multilingual = models.multilingual(self.model_infos) if cfg.language_fallback \
            else None
