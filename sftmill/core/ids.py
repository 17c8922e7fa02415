"""Content IDs: every row's ID is a hash of what it holds, so re-running a stage adds no
duplicates and equal inputs meet equal keys."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_id(*parts: Any) -> str:
    """A stable 16-hex-digit ID from the JSON form of `parts`."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
