"""``riskcl adopt``: a model trained elsewhere becomes an ordinary run folder, so the whole safety half applies.

The model is an ONNX file (run by ONNX Runtime), a TorchScript file, or a table of its predictions (CSV or Parquet)
from a study. The config's ``data:`` section names the data set as for training, so the validation, calibration and
test splits are carved exactly as for a trained run (or taken from the table's split column, checked for group
leaks); its ``adopt:`` section declares what riskcl cannot guess (the model's class order, its input size, layout,
channels, range, mean and std, and the resize; see :class:`riskcl.config.AdoptConfig`).

A model file is run over the three evaluation splits on the images at their own size through the declared
preprocessing (:class:`riskcl.data.adopted.DeclaredPreprocess`); the run folder then holds the predictions in the
files every command reads, the adopted file copied with its SHA-256 (``adopted.json``), and no training history.
``calibrate``, ``evaluate``, ``card``, ``report``, ``export``, ``serve`` and ``predict`` work on it unchanged (a
table-only run refuses what needs a model, saying why). What is refused, with the reason and the fix: a model whose
input contradicts the declaration, outputs that are not one per declared class, probabilities that do not sum to
1, non-finite scores, and for a table: duplicate ids, ids the data set does not have, images of a split without a
row, class columns that do not match, and a split column that puts one group in two splits.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..config import ExperimentConfig, config_taxonomy, dicom_policy, run_cost_matrix
from ..data.adopted import DeclaredPreprocess, class_order, read_table, to_logits
from ..data.registry import index_dataset, load_source_images
from ..data.splits import check_no_group_leak
from ..io import file_sha256
from ..tasks import task_of
from .folder import ADOPTED_KINDS, RunFolder
from .run import build_data, resolve_taxonomy

EVAL_SPLITS = ("val", "calib", "test")


def adopted_kind(path: str | Path) -> str:
    """``onnx``, ``torchscript`` or ``table`` from the file's extension; anything else is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in ADOPTED_KINDS:
        raise ValueError(f"{path}: expected an ONNX file (.onnx), a TorchScript file (.pt, .pth, .ts) or a "
                         f"predictions table (.csv, .parquet), but got '{suffix or 'no extension'}'")
    return ADOPTED_KINDS[suffix]


def open_network(path: Path, kind: str, preprocess: DeclaredPreprocess, n_outputs: int) -> Callable:
    """``run(batch) -> (N, K) numpy``: the external model in its own runtime, its declared input checked first."""
    expected = tuple(preprocess(torch.zeros(1, 8, 8, 3, dtype=torch.uint8)).shape[1:])
    if kind == "onnx":
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime's own errors
            raise ValueError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        first = session.get_inputs()[0]
        dims = tuple(first.shape[1:])
        if len(dims) != len(expected) or any(isinstance(d, int) and d != e for d, e in zip(dims, expected)):
            shape = ", ".join(map(str, expected))
            raise ValueError(f"{path}: the model's input '{first.name}' has shape {list(first.shape)}, but the "
                             f"declaration (adopt.input_size, layout, channels) gives (N, {shape}); fix the adopt: "
                             f"section")
        name = first.name

        def run(batch: torch.Tensor) -> np.ndarray:
            return np.asarray(session.run(None, {name: batch.numpy().astype(np.float32)})[0])
    else:
        try:
            module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # a file that is not TorchScript
            raise ValueError(f"{path}: not a TorchScript file torch.jit.load can read ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); export it with "
                             f"torch.jit.trace / torch.jit.script, or to ONNX") from None

        def run(batch: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                try:
                    out = module(batch)
                except Exception as exc:  # noqa: BLE001 - a shape the model does not take
                    raise ValueError(f"{path}: the model refused an input of shape {list(batch.shape)} (declared by "
                                     f"adopt:): {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
                                     ) from None
            return (out[0] if isinstance(out, (tuple, list)) else out).float().numpy()

    def checked(batch: torch.Tensor) -> np.ndarray:
        out = run(batch)
        if out.ndim != 2 or out.shape[1] != n_outputs:
            raise ValueError(f"{path}: the model gives outputs of shape {list(out.shape)}, but adopt.classes declares "
                             f"{n_outputs} classes: expected (N, {n_outputs})")
        return out

    return checked


def network_outputs(run: Callable, preprocess: DeclaredPreprocess, images: Sequence[np.ndarray],
                    batch_size: int = 32) -> np.ndarray:
    """``(N, K)`` outputs of decoded ``uint8`` images at their own size (preprocessed one size at a time)."""
    outputs: list[np.ndarray | None] = [None] * len(images)
    with torch.no_grad():
        inputs = [preprocess(torch.from_numpy(np.ascontiguousarray(im))[None])[0] for im in images]
    for start in range(0, len(images), batch_size):
        out = run(torch.stack(inputs[start:start + batch_size]))
        for k, row in enumerate(out):
            outputs[start + k] = row
    return np.stack(outputs) if outputs else np.zeros((0, 0))


def _table_splits(cfg: ExperimentConfig, table, paths: Sequence[str]) -> dict[str, str]:
    """``{path: split}`` from the table's split column (rows matched to the data set's images)."""
    a = cfg.adopt
    rows = match_rows(table[a.id_column].astype(str).tolist(), paths, str(a.id_column))
    split = table[a.split_column].astype(str).str.strip().str.lower()
    bad = sorted(set(split) - {"train", "val", "calib", "test"})
    if bad:
        raise ValueError(f"adopt.split_column '{a.split_column}': values {bad[:5]}; expected train, val, calib or test")
    return {paths[r]: s for r, s in zip(rows, split)}


def match_rows(ids: Sequence[str], paths: Sequence[str], column: str) -> list[int]:
    """For each table id, the row of the data set's image it names (by path, file name, or file name without its
    extension); duplicate ids and ids the data set does not have are refused, naming them."""
    keys: dict[str, int] = {}
    for k, p in enumerate(paths):
        for key in dict.fromkeys([str(p), Path(p).name, Path(p).stem]):
            keys.setdefault(key, k)
    seen: dict[str, int] = {}
    dup = [i for i in ids if i in seen or seen.setdefault(i, 0)]
    if dup:
        raise ValueError(f"the table's '{column}' column names {len(dup)} image(s) twice, e.g. '{dup[0]}'; keep one "
                         f"row per image")
    unknown = [i for i in ids if i not in keys]
    if unknown:
        raise ValueError(f"the table's '{column}' column names {len(unknown)} image(s) the data set does not have, "
                         f"e.g. '{unknown[0]}' (ids are matched to file names, stems or paths)")
    return [keys[i] for i in ids]


def _table_outputs(cfg: ExperimentConfig, table, ds, split: str, all_paths: Sequence[str]) -> np.ndarray:
    """The table's outputs of one split's images, in ``adopt.classes`` order (``all_paths``: every image of the data
    set, which the table's ids must name); every image of the split must have a row."""
    a = cfg.adopt
    columns = list(a.class_columns) or list(a.classes)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the table has no class column(s) {missing} (it has {list(table.columns)}); name them with "
                         f"adopt.class_columns, one per entry of adopt.classes")
    rows = match_rows(table[a.id_column].astype(str).tolist(), list(all_paths), str(a.id_column))
    row_of = {str(all_paths[r]): k for k, r in enumerate(rows)}
    absent = [p for p in ds.paths if str(p) not in row_of]
    if absent:
        raise ValueError(f"the table has no row for {len(absent)} image(s) of the '{split}' split, e.g. "
                         f"{Path(absent[0]).name}: every image of validation, calibration and test needs one")
    picked = table.iloc[[row_of[str(p)] for p in ds.paths]]
    if a.label_column:
        names = list(ds.taxonomy.classes)
        given = picked[a.label_column].astype(str).tolist()
        wrong = [(Path(ds.paths[i]).name, g, names[int(ds.targets[i])]) for i, g in enumerate(given)
                 if g != names[int(ds.targets[i])]]
        if wrong:
            raise ValueError(f"adopt.label_column '{a.label_column}' disagrees with the data set's label for "
                             f"{len(wrong)} image(s), e.g. {wrong[0][0]}: '{wrong[0][1]}' in the table, "
                             f"'{wrong[0][2]}' in the data set")
    try:
        return picked[columns].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"the class columns {columns} must hold numbers") from None


def _copy(path: Path, kind: str, dest: Path) -> None:
    """The adopted file into the run folder; an ONNX graph whose weights lie in external data files (as
    ``torch.onnx.export`` writes them) is saved as one self-contained file."""
    if kind != "onnx":
        shutil.copyfile(path, dest)
        return
    import onnx

    model = onnx.load(str(path))  # reads external data from beside the file
    onnx.save_model(model, str(dest))


def _record(path: Path, kind: str, cfg: ExperimentConfig, preprocess: DeclaredPreprocess | None,
            copied: Path) -> dict[str, Any]:
    a = cfg.adopt
    return {"source": str(path), "source_sha256": file_sha256(path), "kind": kind, "file": copied.name,
            "sha256": file_sha256(copied), "classes": list(a.classes), "output": a.output,
            "preprocessing": None if preprocess is None else preprocess.describe(),
            "adopted": time.strftime("%Y-%m-%d %H:%M:%S"), "riskcl": __version__}


def adopt_model(model_path: str | Path, cfg: ExperimentConfig, out: str | Path,
                progress: bool = True) -> dict[str, Any]:
    """Write the run folder of an adopted model (see the module docstring); returns its ``metrics.json``."""
    path = Path(model_path)
    kind = adopted_kind(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if cfg.task != "classification":
        raise ValueError("riskcl adopt takes classification models (task: classification)")
    if cfg.tta != "none":
        raise ValueError("`tta`: an adopted model is scored as it is; set tta: none")
    if not cfg.adopt.classes:
        raise ValueError("`adopt.classes`: name the model's outputs in order, by the data set's class names")
    folder = RunFolder(out)
    if folder.file("config").is_file() and folder.adopted() is None:
        raise FileExistsError(f"{folder.path} holds a run that is not an adopted model; choose another --out")
    table = read_table(path) if kind == "table" else None
    if table is not None:
        for col in [c for c in (cfg.adopt.id_column, cfg.adopt.split_column, cfg.adopt.label_column,
                                cfg.adopt.group_column) if c]:
            if col not in table.columns:
                raise ValueError(f"{path}: no column '{col}' (it has {list(table.columns)})")
    fixed, every = None, []
    if table is not None:  # the table's ids may name any image of the data set (its own training ones too)
        every = index_dataset(cfg.data.name, cfg.data.root, **cfg.data.options).table["path"].astype(str).tolist()
        if cfg.adopt.split_column:
            fixed = _table_splits(cfg, table, every)
    data = build_data(cfg, progress, fixed_splits=fixed)
    check_no_group_leak({s: np.asarray(ds.groups, dtype=str) for s, ds in data.datasets.items()})
    if table is not None and cfg.adopt.group_column:
        _check_table_groups(cfg, table, data, every)
    missing = [s for s in EVAL_SPLITS if s not in data.datasets]
    if missing:
        raise ValueError(f"adopting needs validation, calibration and test splits; the data have no {missing} (set "
                         f"data.calib_fraction > 0, or a split column with those values)")
    taxonomy = resolve_taxonomy(cfg, next(iter(data.datasets.values())).taxonomy)
    perm = class_order(cfg.adopt.classes, taxonomy.classes, "the model" if table is None else "the table")
    preprocess = None if table is not None else DeclaredPreprocess(cfg.adopt.__dict__).eval()
    run = None if table is not None else open_network(path, kind, preprocess, len(cfg.adopt.classes))
    logits = {}
    for split in EVAL_SPLITS:
        ds = data.datasets[split]
        if table is not None:
            raw = _table_outputs(cfg, table, ds, split, every)
        else:
            images = load_source_images(cfg.data.name, cfg.data.root, list(ds.paths), dicom_policy(cfg.data),
                                        **cfg.data.options)
            raw = network_outputs(run, preprocess, images)
        logits[split] = to_logits(raw, cfg.adopt.output, f"{path} on the {split} split")[:, perm].astype(np.float32)
    return _write(folder, cfg, data, taxonomy, logits, path, kind, preprocess)


def _check_table_groups(cfg: ExperimentConfig, table, data, every: Sequence[str]) -> None:
    """The table's group column must keep each group in one split of the adopted run (``every``: the data set's
    image paths, which the table's ids name)."""
    a = cfg.adopt
    by_group: dict[str, set] = {}
    split_of = {str(p): split for split, ds in data.datasets.items() for p in ds.paths}
    rows = match_rows(table[a.id_column].astype(str).tolist(), every, str(a.id_column))
    for r, g in zip(rows, table[a.group_column].astype(str)):
        if every[r] in split_of:  # an image the data set dropped (a duplicate) is in no split
            by_group.setdefault(g, set()).add(split_of[every[r]])
    leak = sorted(g for g, s in by_group.items() if len(s) > 1)
    if leak:
        raise ValueError(f"adopt.group_column '{a.group_column}': group '{leak[0]}' (and {len(leak) - 1} more) lies in "
                         f"two splits ({sorted(by_group[leak[0]])}): a patient or lesion on both sides leaks")


def _write(folder: RunFolder, cfg: ExperimentConfig, data, taxonomy, logits: dict, path: Path, kind: str,
           preprocess: DeclaredPreprocess | None) -> dict[str, Any]:
    folder.prepare()
    folder.mark("running")
    folder.write_config(cfg)
    folder.write_taxonomy(taxonomy)
    folder.write_splits(data)
    copied = folder.path / RunFolder.adopted_name(kind, path.suffix)
    _copy(path, kind, copied)
    record = _record(path, kind, cfg, preprocess, copied)
    folder.write_adopted(record)
    cost = run_cost_matrix(cfg, config_taxonomy(cfg) or taxonomy)
    task = task_of(cfg.task)
    reports = {}
    for split, lg in logits.items():
        ds = data.datasets[split]
        folder.write_predictions(split, torch.from_numpy(lg), torch.as_tensor(np.asarray(ds.targets)), ds)
        reports[split] = task.report(lg, np.asarray(ds.targets), taxonomy, cost, cfg.decision, groups=ds.groups)
    run = {"name": cfg.name, "task": cfg.task, "dataset": cfg.data.name, "model": f"adopted:{path.name}",
           "loss": "trained elsewhere", "loss_params": {}, "seed": cfg.seed, "epochs": 0, "best_epoch": None,
           "select_metric": None, "decision_rule": cfg.decision, "tta": cfg.tta, "device": "cpu",
           "weights": f"adopted {kind} {record['file']} (SHA-256 {record['sha256'][:12]}...)",
           "classes": list(taxonomy.classes), "levels": list(taxonomy.levels),
           "superclass": taxonomy.superclass.tolist(), "cost_matrix": np.asarray(cost).tolist(),
           "adopted": {k: record[k] for k in ("kind", "source", "sha256", "classes", "output", "preprocessing")},
           **{f"n_{s}": len(d) for s, d in data.datasets.items()}, "riskcl": __version__}
    folder.write_metrics({**reports["test"], "val": reports["val"], "calib": reports["calib"], "run": run,
                          "wall_time_s": float("nan")})
    folder.mark("finished")
    return folder.metrics()
