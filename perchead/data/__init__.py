"""Data: synthetic multi-view heads, the on-disk multi-view format, image folders and mixing."""
