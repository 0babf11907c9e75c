"""ccr-box: drive Claude Code sessions on many machines from Telegram."""

__version__ = "0.1.0"
