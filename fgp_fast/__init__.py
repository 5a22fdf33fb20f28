"""fgp_fast: fast, editable 3D-flow-guided portrait animation (FG-Portrait)."""
__version__ = "0.1.0"
