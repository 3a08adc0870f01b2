"""Media inputs: images decoded from paths, bytes, arrays or PIL images (with their limits), and
zero-copy views of Arrow image columns."""
