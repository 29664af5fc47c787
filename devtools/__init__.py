"""Development helpers: embedded data stores and the `make run` launcher."""
