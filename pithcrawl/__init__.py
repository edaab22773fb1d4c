"""pithcrawl: watchdog and archive for the Pith open graph."""

__version__ = "0.1.0"
