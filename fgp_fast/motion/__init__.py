"""Motion: driving, edits, keyframe scripts."""
