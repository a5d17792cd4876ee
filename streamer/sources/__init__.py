"""Video sources: each turns a URL or a file into frames stamped with stream time."""
