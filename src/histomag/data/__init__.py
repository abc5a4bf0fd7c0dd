"""Dataset folders (manifest + images), torch datasets and set builders."""
