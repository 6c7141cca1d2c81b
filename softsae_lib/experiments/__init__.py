"""Experiment drivers: library calls that notebooks and the command line share."""
