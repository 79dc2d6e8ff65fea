"""Defaults that several layers and the command line share, named once (importing this module costs nothing).

Defaults that belong to one component live beside it (the lambdas in ``taxonomy``, the config dataclasses' fields);
these are the ones the library functions and the CLI's ``default=`` both need.
"""
N_BOOT = 1000                          # bootstrap resamples of every confidence interval
DELTA = 0.1                            # failure probability of a Learn-then-Test guarantee
FRONTIER_TARGETS = (0.95, 0.98, 0.99)  # target sensitivities of the fair comparison
BORDERLINE = 0.05                      # |p(malignant) - threshold| at or under which a decision is borderline
MIN_SENSITIVITY = 0.8                  # model-card floors under which a model is flagged not fit for use
MIN_SPECIFICITY = 0.5
SALIENCY_METHODS = ("gradcam", "gradcam++", "xgradcam", "eigencam", "layercam")  # explain / serve --method
SALIENCY = "gradcam"
MAX_BATCH = 16                         # serve: concurrent images scored in one model call
MAX_WAIT_MS = 5.0                      # serve: how long the first image of a batch waits for others
OBJECTIVES = ("guarantee", "expected-cost", "minimax")  # calibrate --objective ("guarantee": the largest certified)
ROTATION_DEGREES = 15.0                # training augmentation (the paper's): a random turn within +-15 degrees
AUGMENT_FLIPS = ("both", "horizontal", "none")  # augment.flips: which random flips (each with probability 1/2)
