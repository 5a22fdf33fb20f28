"""Motion: per-frame head rotation and expression, how a driver carries it onto a portrait
(``drive``), the one edit grammar (``parse_edits``, ``edits_from_mapping``, ``apply_edits``) and
keyframe scripts (``load_script``, ``script_motion``)."""
from .drive import MODES, Motion, drive
from .edits import ANGLE_LIMIT, ANGLES, Edit, apply_edits, edits_from_mapping, make_edit, parse_edits
from .script import SCRIPT_SUFFIXES, load_script, script_motion

__all__ = ["ANGLES", "ANGLE_LIMIT", "MODES", "SCRIPT_SUFFIXES", "Edit", "Motion", "apply_edits", "drive",
           "edits_from_mapping", "load_script", "make_edit", "parse_edits", "script_motion"]
