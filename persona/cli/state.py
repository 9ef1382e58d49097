"""What the global options set, shared by every command: ``persona --config F --log-level L <command>``.

Its own module, below ``main`` (which registers the commands) and the commands (which read it), so no
command imports the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from persona.settings import Settings

__all__ = ["STATE", "CliState"]


@dataclass
class CliState:
    config: str | None = None
    log_level: str | None = None
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            from persona import log
            from persona.config import load_settings

            self._settings = load_settings(self.config)
            log.configure(self.log_level or self._settings.log.level, self._settings.log.format)
        return self._settings


STATE = CliState()
