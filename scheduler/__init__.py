"""The clock process and its sweeps."""
