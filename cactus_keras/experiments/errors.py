"""The error of an invalid experiment config."""


class ConfigError(ValueError):
    """An experiment config is invalid; the message names the key and the fix."""
