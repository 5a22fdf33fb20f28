"""Media I/O: images and video files."""
