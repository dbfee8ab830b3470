"""The one exception type for bad user input.

Anything a user types (config files and overrides, presets, architecture strings,
genotypes, dataset names and paths, CLI flags) that cannot be used raises
`UserInputError` with a one-paragraph message that names the offending value and
says what would be accepted. The CLIs catch it, print the message and exit with
status 2 before any compute starts.
"""

EXIT_BAD_INPUT = 2


class UserInputError(ValueError):
  """Bad user input; the message is meant to be printed to the user as is."""


class InfeasibleRangeError(UserInputError):
  """No architecture of a search space satisfies a cost range (and accept predicate)."""
