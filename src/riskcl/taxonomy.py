"""Clinical taxonomies and severity (cost) matrices.

Implements section III of "Risk-Calibrated Learning: Minimizing Fatal Errors in Medical AI": K fine classes,
each with a severity level; level 0 is benign / non-critical and every level >= 1 is critical (malignant).
The severity matrix ``M`` (row = true class, column = predicted class) is

* ``M[i, j] = 1``        when ``S(i) == S(j)`` (correct, or a fine-grained "visual ambiguity" error),
* ``M[i, j] = lambda1``  when ``S(i) = 0`` and ``S(j) = 1`` (Type I: benign called malignant),
* ``M[i, j] = lambda2``  when ``S(i) = 1`` and ``S(j) = 0`` (Type II: malignant called benign, fatal).

Beyond the paper, a taxonomy may carry more than two ordered levels (e.g. SICAPv2 NC < G3 < G4 < G5). The
rule for the costs between levels is linear in the level gap, so that two levels reproduce the paper exactly::

    M[i, j] = 1                                               if L(i) == L(j)
    M[i, j] = 1 + (lambda1 - 1) * (L(j) - L(i)) / L_max       if L(j) >  L(i)   (over-call)
    M[i, j] = 1 + (lambda2 - 1) * (L(i) - L(j)) / L_max       if L(j) <  L(i)   (under-call)

Any user-given K x K matrix is accepted too (:func:`validate_cost_matrix`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = [
    "Taxonomy",
    "get_taxonomy",
    "list_taxonomies",
    "load_taxonomy",
    "severity_matrix",
    "validate_cost_matrix",
    "cost_matrix_from_mapping",
    "loss_weight_matrix", "resolve_cost_matrix",
    "DEFAULT_LAMBDA1",
    "DEFAULT_LAMBDA2",
]

# The paper's proposed penalties (Type I, Type II): the default clinical cost wherever none is given.
DEFAULT_LAMBDA1 = 5.0
DEFAULT_LAMBDA2 = 20.0


@dataclass(frozen=True)
class Taxonomy:
    """Ordered fine classes with a severity level each.

    Args:
        name: identifier, e.g. ``"isic2018"``.
        classes: fine class names in label order (label ``k`` is ``classes[k]``).
        levels: severity level per class; 0 = benign, >= 1 = critical (malignant). Two levels is the paper's case.
        display_names: optional longer names for reports.

    Example:
        >>> tax = Taxonomy("toy", ("b1", "b2", "m1"), (0, 0, 1))
        >>> tax.superclass.tolist()
        [0, 0, 1]
    """

    name: str
    classes: tuple[str, ...]
    levels: tuple[int, ...]
    display_names: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        classes = tuple(str(c) for c in self.classes)
        levels = tuple(self.levels)
        object.__setattr__(self, "classes", classes)
        if len(classes) < 2:
            raise ValueError(f"Taxonomy '{self.name}': expected at least 2 classes, but got {len(classes)}")
        seen: set[str] = set()
        for c in classes:
            if not c:
                raise ValueError(f"Taxonomy '{self.name}': class names must be non-empty strings")
            if c in seen:
                raise ValueError(f"Taxonomy '{self.name}': duplicate class name '{c}'")
            seen.add(c)
        if len(levels) != len(classes):
            raise ValueError(
                f"Taxonomy '{self.name}': expected one severity level per class ({len(classes)}), "
                f"but got {len(levels)}"
            )
        for c, lv in zip(classes, levels):
            if isinstance(lv, bool) or not isinstance(lv, (int, np.integer)) or lv < 0:
                raise ValueError(
                    f"Taxonomy '{self.name}': severity level of class '{c}' must be an integer >= 0, but got {lv!r}"
                )
        object.__setattr__(self, "levels", tuple(int(v) for v in levels))
        unknown = set(self.display_names) - seen
        if unknown:
            raise ValueError(f"Taxonomy '{self.name}': display_names name unknown classes {sorted(unknown)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def superclass(self) -> np.ndarray:
        """``S(c)`` per class: 0 benign, 1 critical (any level >= 1)."""
        return (np.asarray(self.levels) >= 1).astype(np.int64)

    @property
    def benign_indices(self) -> list[int]:
        return [i for i, s in enumerate(self.superclass) if s == 0]

    @property
    def malignant_indices(self) -> list[int]:
        return [i for i, s in enumerate(self.superclass) if s == 1]

    @property
    def max_level(self) -> int:
        return max(self.levels)

    def index(self, class_name: str) -> int:
        """Label index of ``class_name``; ``ValueError`` naming the known classes otherwise."""
        try:
            return self.classes.index(class_name)
        except ValueError:
            raise ValueError(
                f"Unknown class '{class_name}' for taxonomy '{self.name}'; expected one of {list(self.classes)}"
            ) from None

    def require_both_superclasses(self) -> None:
        """Raise unless the taxonomy has at least one benign and one malignant class."""
        if not self.benign_indices:
            raise ValueError(f"Taxonomy '{self.name}' has no benign (level 0) class; a safety metric needs one")
        if not self.malignant_indices:
            raise ValueError(f"Taxonomy '{self.name}' has no malignant (level >= 1) class; a safety metric needs one")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "classes": {c: lv for c, lv in zip(self.classes, self.levels)}}
        if self.display_names:
            out["display_names"] = dict(self.display_names)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Taxonomy":
        """Build from ``{"name": ..., "classes": {class: level, ...}}`` or from
        ``{"name": ..., "benign": [...], "malignant": [...]}`` (label order: as listed under ``classes``, or
        benign first then malignant)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"Expected a taxonomy mapping, but got {type(data).__name__}")
        allowed = {"name", "classes", "benign", "malignant", "display_names"}
        extra = set(data) - allowed
        if extra:
            raise ValueError(f"Unknown taxonomy keys {sorted(extra)}; expected some of {sorted(allowed)}")
        name = str(data.get("name", "custom"))
        if "classes" in data:
            classes = data["classes"]
            if not isinstance(classes, Mapping):
                raise ValueError(
                    f"Taxonomy '{name}': expected `classes` to be a mapping class -> level, but got "
                    f"{type(classes).__name__}"
                )
            names, levels = list(classes.keys()), list(classes.values())
        elif "benign" in data and "malignant" in data:
            benign, malignant = data["benign"], data["malignant"]
            for key, val in (("benign", benign), ("malignant", malignant)):
                if not isinstance(val, (list, tuple)):
                    raise ValueError(f"Taxonomy '{name}': expected `{key}` to be a list of class names")
            names = list(benign) + list(malignant)
            levels = [0] * len(benign) + [1] * len(malignant)
        else:
            raise ValueError(f"Taxonomy '{name}': expected `classes` or both `benign` and `malignant`")
        display = data.get("display_names") or {}
        if not isinstance(display, Mapping):
            raise ValueError(f"Taxonomy '{name}': expected `display_names` to be a mapping class -> name")
        return cls(name, tuple(names), tuple(levels), dict(display))


_BUILTIN: dict[str, dict[str, Any]] = {
    "brain_mri": {"benign": ["notumor"], "malignant": ["glioma", "meningioma", "pituitary"],
                  "order": ["glioma", "meningioma", "notumor", "pituitary"]},
    "isic2018": {"benign": ["NV", "BKL", "DF", "VASC"], "malignant": ["MEL", "BCC", "AKIEC"],
                 "order": ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"],
                 "display": {"MEL": "melanoma", "NV": "melanocytic nevus", "BCC": "basal cell carcinoma",
                             "AKIEC": "actinic keratosis / intraepithelial carcinoma",
                             "BKL": "benign keratosis", "DF": "dermatofibroma", "VASC": "vascular lesion"}},
    "breakhis": {"benign": ["adenosis", "fibroadenoma", "phyllodes_tumor", "tubular_adenoma"],
                 "malignant": ["ductal_carcinoma", "lobular_carcinoma", "mucinous_carcinoma",
                               "papillary_carcinoma"]},
    "sicapv2": {"benign": ["NC"], "malignant": ["G3", "G4", "G5"]},
    # Binary lesion segmentation: a pixel is background or lesion; a missed lesion pixel is the Type II error.
    "lesion": {"benign": ["background"], "malignant": ["lesion"]},
    # Beyond the paper: the ordinal Gleason view of SICAPv2 (NC < G3 < G4 < G5).
    "sicapv2_gleason": {"levels": {"NC": 0, "G3": 1, "G4": 2, "G5": 3}},
    # MedMNIST (official label order of each .npz).
    "dermamnist": {"levels": {"akiec": 1, "bcc": 1, "bkl": 0, "df": 0, "mel": 1, "nv": 0, "vasc": 0}},
    "breastmnist": {"levels": {"malignant": 1, "benign_or_normal": 0}},
    "pathmnist": {"levels": {"adipose": 0, "background": 0, "debris": 0, "lymphocytes": 0, "mucus": 0,
                             "smooth_muscle": 0, "normal_mucosa": 0, "stroma": 0, "tumor_epithelium": 1}},
    # The embedded demo data set (riskcl.data.demo).
    "demo": {"benign": ["nevus", "keratosis"], "malignant": ["melanoma", "carcinoma"],
             "order": ["nevus", "keratosis", "melanoma", "carcinoma"]},
}


def list_taxonomies() -> list[str]:
    """Names accepted by :func:`get_taxonomy`."""
    return sorted(_BUILTIN)


def get_taxonomy(name: str) -> Taxonomy:
    """A built-in taxonomy: ``brain_mri``, ``isic2018``, ``breakhis``, ``sicapv2`` (SPEC section 5) and more.

    Example:
        >>> get_taxonomy("brain_mri").classes
        ('glioma', 'meningioma', 'notumor', 'pituitary')
    """
    if name not in _BUILTIN:
        raise ValueError(f"Unknown taxonomy '{name}'; expected one of {list_taxonomies()} or a YAML file path")
    spec = _BUILTIN[name]
    if "levels" in spec:
        return Taxonomy(name, tuple(spec["levels"]), tuple(spec["levels"].values()))
    benign, malignant = spec["benign"], spec["malignant"]
    order = spec.get("order", benign + malignant)
    levels = tuple(0 if c in benign else 1 for c in order)
    return Taxonomy(name, tuple(order), levels, dict(spec.get("display", {})))


def load_taxonomy(source: str | Path | Mapping[str, Any] | Taxonomy) -> Taxonomy:
    """A taxonomy from a built-in name, a YAML file path, a mapping, or a :class:`Taxonomy` (returned as is)."""
    if isinstance(source, Taxonomy):
        return source
    if isinstance(source, Mapping):
        return Taxonomy.from_dict(source)
    text = str(source)
    if text in _BUILTIN:
        return get_taxonomy(text)
    path = Path(text)
    if not path.is_file():
        raise ValueError(
            f"Taxonomy '{text}' is neither a built-in name ({list_taxonomies()}) nor an existing YAML file"
        )
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    try:
        return Taxonomy.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


MAX_COST = 1e6  # costs are relative; larger ones overflow the float32 losses they weight (1e308 became inf)


def _check_lambda(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"Expected `{name}` to be a number, but got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"Expected `{name}` to be finite and >= 0, but got {value}")
    if value > MAX_COST:
        raise ValueError(f"Expected `{name}` <= {MAX_COST:g} (costs are relative: scale them down; larger values "
                         f"overflow the float32 loss), but got {value:g}")
    return value


def severity_matrix(taxonomy: Taxonomy, lambda1: float = DEFAULT_LAMBDA1,
                    lambda2: float = DEFAULT_LAMBDA2) -> np.ndarray:
    """The K x K severity matrix of the taxonomy (rule in the module docstring).

    Args:
        taxonomy: the class hierarchy.
        lambda1: Type I penalty (benign predicted as malignant).
        lambda2: Type II penalty (malignant predicted as benign).

    Returns:
        ``float64`` array of shape ``(K, K)``, row = true class, column = predicted class.

    Example:
        >>> tax = Taxonomy("t", ("b1", "b2", "m1", "m2"), (0, 0, 1, 1))
        >>> severity_matrix(tax, 5, 20)[2].tolist()
        [20.0, 20.0, 1.0, 1.0]
    """
    l1, l2 = _check_lambda("lambda1", lambda1), _check_lambda("lambda2", lambda2)
    lv = np.asarray(taxonomy.levels, dtype=np.float64)
    lmax = max(taxonomy.max_level, 1)
    gap = (lv[None, :] - lv[:, None]) / lmax  # > 0: over-call, < 0: under-call
    m = np.ones((taxonomy.num_classes,) * 2, dtype=np.float64)
    m = np.where(gap > 0, 1.0 + (l1 - 1.0) * gap, m)
    m = np.where(gap < 0, 1.0 + (l2 - 1.0) * (-gap), m)
    return m


def validate_cost_matrix(matrix: Any, taxonomy: Taxonomy | None = None, name: str = "cost_matrix") -> np.ndarray:
    """Check a user-given cost matrix and return it as a ``float64`` array.

    Raises ``ValueError`` for a non-square or wrongly sized matrix, non-finite or negative entries.
    """
    try:
        arr = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"Expected `{name}` to be a numeric K x K matrix, but got {matrix!r}") from None
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"Expected `{name}` to be a square K x K matrix, but got shape {arr.shape}")
    if taxonomy is not None and arr.shape[0] != taxonomy.num_classes:
        raise ValueError(
            f"Expected `{name}` of shape ({taxonomy.num_classes}, {taxonomy.num_classes}) for taxonomy "
            f"'{taxonomy.name}', but got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"Expected `{name}` to hold finite values only, but it has NaN or inf")
    if np.any(arr < 0):
        i, j = np.argwhere(arr < 0)[0]
        raise ValueError(f"Expected `{name}` entries >= 0, but entry [{i}, {j}] is {arr[i, j]}")
    if np.any(arr > MAX_COST):
        i, j = np.argwhere(arr > MAX_COST)[0]
        raise ValueError(f"Expected `{name}` entries <= {MAX_COST:g} (costs are relative: scale them down), but "
                         f"entry [{i}, {j}] is {arr[i, j]:g}")
    return arr


def cost_matrix_from_mapping(costs: Mapping[str, Mapping[str, float]], taxonomy: Taxonomy,
                             default: float = 1.0) -> np.ndarray:
    """A clinical cost matrix from ``{true_class: {predicted_class: cost}}``; unnamed errors get ``default``, and
    a correct decision costs 0 unless given."""
    m = np.full((taxonomy.num_classes,) * 2, float(default))
    np.fill_diagonal(m, 0.0)
    for true_name, row in costs.items():
        i = taxonomy.index(true_name)
        if not isinstance(row, Mapping):
            raise ValueError(f"cost_matrix row '{true_name}': expected a mapping predicted class -> cost")
        for pred_name, value in row.items():
            m[i, taxonomy.index(pred_name)] = _check_lambda(f"cost_matrix[{true_name}][{pred_name}]", value)
    return validate_cost_matrix(m, taxonomy)


def resolve_cost_matrix(taxonomy: Taxonomy, lambda1: float = DEFAULT_LAMBDA1, lambda2: float = DEFAULT_LAMBDA2,
                        matrix: Any = None, within: float = 1.0) -> np.ndarray:
    """The K x K clinical cost matrix of a run: what a decision costs, 0 when it is correct. ``matrix`` when given
    (a K x K list or ``{true: {predicted: cost}}`` by class names), else the severity matrix's errors (``lambda1``
    / ``lambda2`` across superclasses) with ``within`` for a confusion inside a superclass and 0 on the diagonal.

    The paper's severity matrix (:func:`severity_matrix`) is a loss weight, 1 for a correct prediction; a clinical
    cost is not (a correct answer costing as much as a confusion inside the superclass would make ``mean_cost``
    reward nothing). :func:`loss_weight_matrix` turns a cost back into loss weights.

    Example:
        >>> tax = Taxonomy("t", ("b", "m"), (0, 1))
        >>> resolve_cost_matrix(tax, 2, 40).tolist()
        [[0.0, 2.0], [40.0, 0.0]]
        >>> resolve_cost_matrix(tax, matrix={"m": {"b": 100}}).tolist()
        [[0.0, 1.0], [100.0, 0.0]]
    """
    if matrix is None:
        m = severity_matrix(taxonomy, lambda1, lambda2)
        lv = np.asarray(taxonomy.levels)
        m[(lv[:, None] == lv[None, :])] = _check_lambda("within", within)
        np.fill_diagonal(m, 0.0)
        return m
    m = cost_matrix_from_mapping(matrix, taxonomy) if isinstance(matrix, Mapping) else \
        validate_cost_matrix(matrix, taxonomy)
    off = ~np.eye(m.shape[0], dtype=bool)
    if not np.any(m[off] > 0):
        raise ValueError("Expected `cost_matrix` to give some error a cost > 0, but every off-diagonal entry is 0 "
                         "(no error would cost anything: the risk-calibrated loss would vanish and selection by "
                         "mean cost would choose at random)")
    return m


def loss_weight_matrix(cost: Any) -> np.ndarray:
    """Loss weights from a clinical cost: the cost with 1 on the diagonal (the paper's weight of a correct
    prediction, so a correct answer keeps its plain cross-entropy).

    Example:
        >>> loss_weight_matrix([[0, 5], [20, 0]]).tolist()
        [[1.0, 5.0], [20.0, 1.0]]
    """
    m = np.array(cost, dtype=np.float64)
    np.fill_diagonal(m, 1.0)
    return m
