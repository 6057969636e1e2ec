"""syncd: stream every change in SQLite files into a live, verified PostgreSQL replica."""

__version__ = "0.1.0"
