"""The project's error types that several layers raise (a leaf module)."""


class ConfigError(ValueError):
  """A config value that cannot run; the message names `config.<key>`."""
