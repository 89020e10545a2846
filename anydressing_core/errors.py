"""Errors the pack raises on bad input: always say what was expected, what came, and what to change."""


class AnyDressingError(ValueError):
    """Bad input or bad weights; subclass of ValueError so hosts show it as a user error."""
