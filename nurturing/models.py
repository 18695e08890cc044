"""Models of the nurturing app; filled in by its own issue."""
