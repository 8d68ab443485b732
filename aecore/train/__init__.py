"""Training: one jitted step for every variant (`step`), and `fit`, the loop around it (`loop`),
over a batch source (`batches`), writing into a run directory (`rundir`).
"""

from aecore.train.batches import batch_at, epoch_order
from aecore.train.loop import FitResult, fit
from aecore.train.step import (
    LR_SCHEDULES,
    OPTIMIZERS,
    TrainConfig,
    TrainingDiverged,
    evaluate_reconstruction,
    init_optimizer,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "FitResult",
    "TrainConfig",
    "TrainingDiverged",
    "batch_at",
    "epoch_order",
    "evaluate_reconstruction",
    "fit",
    "init_optimizer",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
]
