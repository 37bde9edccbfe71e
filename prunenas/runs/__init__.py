"""The run folder: results store, statistics, report, export and the architecture catalog."""
