"""Rulers: structures of known physical size that state an image's resolution (nuclei; more to come)."""
