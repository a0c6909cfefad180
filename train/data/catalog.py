"""Class lists: names, palette colours, the ignore id, and how label-file values map to model ids.

Every dataset reaches the model in its own *contiguous* numbering ``0..C-1`` (the graph contract's ``label``).
A :class:`ClassList` records, per model id, the value that stands for it in the label files (``raw``), so that
reading a label file is one table lookup (:meth:`ClassList.lut`). The built-in lists live as JSON data in
``train/data/classes/`` (see the ``source`` fields there); a ``folder`` dataset brings its own classes file.

Folder classes files (``classes.txt`` or ``classes.json``)
- ``classes.txt``: one class per line, in id order (line ``i`` is the class whose label-file value is ``i``);
  a line is ``name`` or ``name R G B``. Blank lines and lines starting with ``#`` are skipped. A line
  ``ignore_id: N`` declares the ignore id.
- ``classes.json``: ``{"classes": ["sky", {"name": "road", "color": [128, 64, 128]}, ...], "ignore_id": N}``.
- ``ignore_id`` N < number of classes: class N stays an input class, losses and metrics ignore it (as
  Cityscapes' 0). N >= number of classes (e.g. 255 for "void"): label-file value N becomes one more class,
  ``unlabeled``, appended last, and that is the ignore id (as COCO-Stuff's 255).
- Classes without a colour get one from :func:`distinct_colors`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpsims.errors import DataError

BUILTIN_DIR = Path(__file__).resolve().parent / "classes"


@dataclass(frozen=True)
class ClassList:
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    """RGB 0..255 per model id."""
    raw: tuple[int | None, ...]
    """The label-file value of each model id; None for a class that never appears in files."""
    ignore_id: int | None = None
    """Model id that losses and metrics ignore (still an input class of the generator), or None."""

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.palette) != n or len(self.raw) != n:
            raise DataError(f"names, palette and raw must have the same length, got {n}, {len(self.palette)}, {len(self.raw)}.")
        used = [r for r in self.raw if r is not None]
        if len(set(used)) != len(used):
            raise DataError("two classes share the same label-file value.")
        if self.ignore_id is not None and not 0 <= self.ignore_id < n:
            raise DataError(f"ignore_id {self.ignore_id} is not a class id (0..{n - 1}).")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def raw_values(self) -> list[int]:
        """The label-file values that are valid, sorted."""
        return sorted(r for r in self.raw if r is not None)

    def lut(self) -> np.ndarray:
        """int64 table ``raw value -> model id`` (-1 for values that name no class); covers at least 0..255."""
        size = max([256, *(r + 1 for r in self.raw_values)])
        table = np.full(size, -1, dtype=np.int64)
        for model_id, raw in enumerate(self.raw):
            if raw is not None:
                table[raw] = model_id
        return table

    def to_dict(self) -> dict:
        return {
            "ignore_id": self.ignore_id,
            "classes": [
                {"id": i, "name": n, "raw": r, "color": list(c)}
                for i, (n, r, c) in enumerate(zip(self.names, self.raw, self.palette))
            ],
        }


def distinct_colors(n: int, low: int = 0, high: int = 255) -> list[list[int]]:
    """``n`` RGB colours in ``[low, high]`` per channel, spread out by greedy farthest-point sampling.

    Each new colour is the candidate (a 16-level grid) farthest from all colours chosen so far, starting from
    red. Deterministic, and a prefix of the sequence for any larger ``n``: class ``i`` keeps its colour when
    classes are added."""
    if n <= 0:
        return []
    levels = np.linspace(low, high, 16)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    start = np.array([high, low, low], dtype=np.float64)  # red first: a readable first class
    chosen = [int(np.argmin(((grid - start) ** 2).sum(1)))]
    dist = ((grid - grid[chosen[0]]) ** 2).sum(1)
    while len(chosen) < min(n, len(grid)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((grid - grid[nxt]) ** 2).sum(1))
    colors = np.rint(grid[chosen]).astype(int).tolist()
    while len(colors) < n:  # more classes than grid points: repeat (never reached below 4096 classes)
        colors.append(colors[len(colors) % len(chosen)])
    return colors


# ------------------------------------------------------------------------------------------------ reading


def load_builtin(name: str) -> ClassList:
    """The class list of a built-in dataset: ``ade20k``, ``coco-stuff`` or ``cityscapes``."""
    path = BUILTIN_DIR / f"{name.replace('-', '_')}.json"
    if not path.is_file():
        known = sorted(p.stem.replace("_", "-") for p in BUILTIN_DIR.glob("*.json"))
        raise DataError(f"No built-in class list {name!r}; known: {', '.join(known)}.")
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = sorted(data["classes"], key=lambda c: c["id"])
    if [c["id"] for c in entries] != list(range(len(entries))):
        raise DataError(f"{path}: class ids must be 0..N-1 without gaps.")
    return ClassList(
        names=tuple(c["name"] for c in entries),
        palette=tuple(tuple(c["color"]) for c in entries),
        raw=tuple(c["raw"] for c in entries),
        ignore_id=data.get("ignore_id"),
    )


_IGNORE_LINE = re.compile(r"^ignore_id\s*[:=]\s*(-?\d+)\s*$")


def _parse_txt(path: Path) -> tuple[list[tuple[str, list[int] | None]], int | None]:
    entries: list[tuple[str, list[int] | None]] = []
    ignore = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _IGNORE_LINE.match(line)
        if m:
            ignore = int(m.group(1))
            continue
        parts = line.split()
        if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):  # "name R G B"; else the line is the name
            entries.append((" ".join(parts[:-3]), [int(p) for p in parts[-3:]]))
        else:
            entries.append((line, None))
    return entries, ignore


def _parse_json(path: Path) -> tuple[list[tuple[str, list[int] | None]], int | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    if isinstance(data, list):
        data = {"classes": data}
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise DataError(f'{path} must hold {{"classes": [...], "ignore_id": N or null}}.')
    entries: list[tuple[str, list[int] | None]] = []
    for i, c in enumerate(data["classes"]):
        if isinstance(c, str):
            entries.append((c, None))
        elif isinstance(c, dict) and isinstance(c.get("name"), str):
            entries.append((c["name"], c.get("color")))
        else:
            raise DataError(f'{path}: class {i} must be a name or {{"name": ..., "color": [R, G, B]}}, got {c!r}.')
    ignore = data.get("ignore_id")
    if ignore is not None and not isinstance(ignore, int):
        raise DataError(f"{path}: ignore_id must be an integer or null, got {ignore!r}.")
    return entries, ignore


def read_classes_file(path: str | Path) -> ClassList:
    """Read a folder dataset's ``classes.txt`` / ``classes.json`` (format in the module docstring)."""
    path = Path(path)
    try:
        entries, ignore = _parse_json(path) if path.suffix.lower() == ".json" else _parse_txt(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8.") from None
    if not entries:
        raise DataError(f"{path} lists no classes; write one class name per line.")
    for name, color in entries:
        if color is not None and (not isinstance(color, list) or len(color) != 3
                                  or not all(isinstance(v, int) and 0 <= v <= 255 for v in color)):
            raise DataError(f"{path}: colour of class {name!r} must be three integers 0..255, got {color!r}.")
    raw: list[int | None] = list(range(len(entries)))
    if ignore is not None and ignore < 0:
        raise DataError(f"{path}: ignore_id must be >= 0, got {ignore}.")
    if ignore is not None and ignore >= len(entries):
        entries.append(("unlabeled", None))
        raw.append(ignore)
        ignore = len(entries) - 1
    defaults = distinct_colors(len(entries))
    return ClassList(
        names=tuple(n for n, _ in entries),
        palette=tuple(tuple(c if c is not None else defaults[i]) for i, (_, c) in enumerate(entries)),
        raw=tuple(raw),
        ignore_id=ignore,
    )
