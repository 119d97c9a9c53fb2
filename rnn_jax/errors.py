"""The one exception type that means "the user asked for something impossible"."""


class UserError(Exception):
  """Bad input: entry points print its message on one line and exit non-zero."""
