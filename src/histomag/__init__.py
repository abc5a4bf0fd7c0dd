"""histomag."""
