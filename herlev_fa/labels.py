"""Domain facts of the Herlev Pap-smear data, stated once and imported everywhere.

What lives here: the seven archive classes with their folder aliases and severities, the
three tasks built on them (`severity`, `herlev7`, `binary`), the optional user class map for
other folder-per-class datasets, and the segmentation-mask colour codes.

What does not: reading folders (``herlev_fa.data.items``) or decoding masks.

Class order is always the severity order, never alphabetical: the regression term of the
``cls_reg`` head maps class *index* to severity, so an alphabetical vocab would silently
scramble the ordinal meaning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from herlev_fa.errors import HerlevError, missing

# The seven classes of the Herlev archive ("smear2005"), in severity order, with the severity
# score each carries (normals 0, then light .. carcinoma in situ = 1 .. 4).
HERLEV7: tuple[tuple[str, int], ...] = (
    ("normal_superficial", 0),
    ("normal_intermediate", 0),
    ("normal_columnar", 0),
    ("light_dysplastic", 1),
    ("moderate_dysplastic", 2),
    ("severe_dysplastic", 3),
    ("carcinoma_in_situ", 4),
)

# The archive's own folder names where they differ from the canonical ones (its French spelling).
_ARCHIVE_SPELLING = {"normal_superficial": "normal_superficiel"}

# The folder names the archive itself uses, by canonical name; the synthetic generator writes these.
ARCHIVE_FOLDERS: dict[str, str] = {name: _ARCHIVE_SPELLING.get(name, name) for name, _ in HERLEV7}

# Folder names seen in real copies of the archive, lower-cased, mapped to the canonical name.
FOLDER_ALIASES: dict[str, str] = {**{name: name for name, _ in HERLEV7},
                                  **{folder: name for name, folder in _ARCHIVE_SPELLING.items()}}

# Segmentation-mask colour codes (RGB) of the archive's `X-d.bmp` files.
NUCLEUS_RGB = (0, 0, 255)
CYTOPLASM_RGB = (0, 0, 128)
BACKGROUND_RGB = (255, 0, 0)
BORDER_RGB = (128, 128, 128)  # grey band, mostly along the cell border

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_SUFFIXES = ("-d.bmp", "-d.png")  # `<stem>-d.bmp` (archive) or `<stem>-d.png` beside `<stem>.*`

TASK_NAMES = ("severity", "herlev7", "binary")


@dataclass(frozen=True)
class Task:
    """A labelling of the folders: which folder goes to which class, and each class's severity.

    `classes` is in severity order; `severities[i]` is the severity score of `classes[i]`;
    `folder_to_class` maps a canonical (or, for a class map, lower-cased) folder name to a class.
    """

    name: str
    classes: tuple[str, ...]
    severities: tuple[float, ...]
    folder_to_class: dict[str, str]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_of_folder(self, folder: str) -> str | None:
        """The class of a folder name (case-insensitive, archive aliases allowed), or None."""
        key = folder.strip().lower()
        return self.folder_to_class.get(key) or self.folder_to_class.get(FOLDER_ALIASES.get(key, key))

    def abnormal(self) -> tuple[bool, ...]:
        """Per class: is it abnormal (severity > 0)? Binary accuracy and AUC rest on this."""
        return tuple(s > 0 for s in self.severities)

    def has_unique_severities(self) -> bool:
        return len(set(self.severities)) == len(self.severities)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "severities": list(self.severities),
            "folder_to_class": dict(self.folder_to_class),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Task":
        try:
            return cls(
                name=str(d["name"]),
                classes=tuple(str(c) for c in d["classes"]),
                severities=tuple(float(s) for s in d["severities"]),
                folder_to_class={str(k): str(v) for k, v in d["folder_to_class"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise HerlevError(f"task description is malformed ({e!r}); the run folder may be damaged") from e


def short_name(cls: str) -> str:
    """A class name short enough for plot axes and tables: `light_dysplastic` -> `light`, CIS, n_columnar."""
    return cls.replace("_dysplastic", "").replace("carcinoma_in_situ", "CIS").replace("normal_", "n_")


def get_task(name: str) -> Task:
    """One of the built-in tasks on the Herlev folders.

    Raises:
        HerlevError: `name` is not a built-in task.
    """
    folders = [f for f, _ in HERLEV7]
    if name == "herlev7":
        return Task(name, tuple(folders), tuple(float(s) for _, s in HERLEV7), {f: f for f in folders})
    if name == "severity":
        classes = ("normal", "light_dysplastic", "moderate_dysplastic", "severe_dysplastic", "carcinoma_in_situ")
        mapping = {f: ("normal" if s == 0 else f) for f, s in HERLEV7}
        return Task(name, classes, (0.0, 1.0, 2.0, 3.0, 4.0), mapping)
    if name == "binary":
        mapping = {f: ("normal" if s == 0 else "abnormal") for f, s in HERLEV7}
        return Task(name, ("normal", "abnormal"), (0.0, 1.0), mapping)
    raise HerlevError(f"unknown task '{name}': choose one of {', '.join(TASK_NAMES)}, or pass --classes FILE")


SEVERITY_RANGE = (0.0, 1000.0)  # what a run's severities may be: finite, non-negative, not absurd


def task_problem(classes: list | tuple, severities: list | tuple) -> str | None:
    """What makes classes and their severities unusable for a run, or None.

    The one rule for both ends: a class map is checked by it before any work, and a run folder's
    `herlev.json` when it is loaded, so that no run is trained that could not be loaded back.
    """
    low, high = SEVERITY_RANGE
    if len(classes) < 2 or len(set(map(str, classes))) != len(classes):
        return f"classes {list(classes)} are not two or more distinct names"
    if (len(severities) != len(classes) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high
            for v in severities)):
        return (f"severities {list(severities)} are not {len(classes)} finite numbers in {low:g}..{high:g}, "
                "one per class")
    return None


def load_class_map(path: str | Path) -> Task:
    """Read a user class map (YAML or JSON) for another folder-per-class dataset.

    The file maps each folder name to its class and severity, e.g. (YAML)::

        im_superficial-intermediate: {class: normal, severity: 0}
        im_koilocytotic: {class: abnormal, severity: 1}

    A plain number instead of a mapping means "class = folder name, with this severity".
    Classes are ordered by severity, ties by first appearance in the file.

    Raises:
        HerlevError: the file is missing, unreadable or malformed, or maps to classes no run could be
            loaded with (`task_problem`: one class, NaN or negative severities).
    """
    path = Path(path)
    if not path.is_file():
        raise HerlevError(missing(path, "class map"))
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        raise HerlevError(f"class map '{path}' is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {e}") from e
    if not isinstance(raw, dict) or not raw:
        raise HerlevError(f"class map '{path}' must map folder names to {{class, severity}}")
    folder_to_class: dict[str, str] = {}
    severity: dict[str, float] = {}
    for folder, spec in raw.items():
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            cls, sev = str(folder), float(spec)
        elif isinstance(spec, dict) and "severity" in spec:
            cls = str(spec.get("class", folder))
            try:
                sev = float(spec["severity"])
            except (TypeError, ValueError):
                raise HerlevError(f"class map '{path}': severity of '{folder}' is not a number") from None
        else:
            raise HerlevError(f"class map '{path}': entry '{folder}' needs a severity, e.g. {{class: x, severity: 1}}")
        if cls in severity and severity[cls] != sev:
            raise HerlevError(f"class map '{path}': class '{cls}' is given two severities ({severity[cls]} and {sev})")
        severity[cls] = sev
        folder_to_class[str(folder).strip().lower()] = cls
    order = sorted(severity, key=lambda c: (severity[c], list(severity).index(c)))
    if len(order) < 2:
        raise HerlevError(f"class map '{path}' maps every folder to one class ('{order[0]}'): a classifier needs two "
                          "or more classes")
    problem = task_problem(order, [severity[c] for c in order])
    if problem:
        raise HerlevError(f"class map '{path}': {problem}")
    return Task(f"classmap:{path.name}", tuple(order), tuple(severity[c] for c in order), folder_to_class)
