"""Small JSON files that several processes share (plan, go signal, outcomes,
meta): written whole or not at all. Never leaves a half-written file where a
reader could see it."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` via a temporary name and a rename, so a
    reader polling for ``path`` sees nothing or the whole file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
