"""The HTTP API, the job store and its state machine, result cleaning and configuration."""
