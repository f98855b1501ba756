"""Results over runs: collecting DVC experiments (runs), statistics over them (statistics),
rendering tables (rendering); the command line in cli."""


class ReportError(ValueError):
    """An expected problem (no runs, mismatched users, ...): one message naming it and the fix."""
