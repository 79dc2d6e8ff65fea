"""The CRC re-split check on real predictions: pool a segmentation run's calibration and test predictions, then
1,000 random calibration / test re-splits of them (as many calibration images as the run had), conformal risk
control on each, and the realised mean missed share of the lesion on the rest. The guarantee says its mean over
re-splits stays <= alpha (within Monte Carlo error).

    python scripts/crc_resplit.py runs/segmentation/*/ --alpha 0.1
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from riskcl.decision.segmentation import lesion_probability, resplit_check
from riskcl.experiment.folder import RunFolder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--splits", type=int, default=1000)
    a = p.parse_args()
    for run in a.runs:
        folder = RunFolder(run)
        cal, test = folder.predictions("calib"), folder.predictions("test")
        probs = np.concatenate([lesion_probability(cal["logits"]), lesion_probability(test["logits"])])
        masks = np.concatenate([cal["target"], test["target"]])
        n_cal = int((cal["target"].reshape(len(cal["target"]), -1).any(1)).sum())
        print(json.dumps({"run": str(folder.path), **resplit_check(probs, masks, a.alpha, n_cal, a.splits)}))


if __name__ == "__main__":
    main()
