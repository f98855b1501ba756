"""Results over runs: collecting DVC experiments, paired statistics, rendering tables."""
