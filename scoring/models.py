"""Models of the scoring app; filled in by its own issue."""
