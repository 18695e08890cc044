"""Models of the handoff app; filled in by its own issue."""
