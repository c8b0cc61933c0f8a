"""Silence what libraries print on every run that a user cannot act on; keep everything else."""

# Each filter names the one message it drops and why, so a new warning from the same library still shows:
# - Lightning's "💡 Tip: ... litlogger" advertisement, printed at every Trainer start;
# - Lightning's own use of torch's deprecated ``LeafSpec`` (a warning about Lightning's code, not ours);
# - Lightning's "Found N module(s) in eval mode at the start of training": the classifier puts exactly its frozen
#   parts (``model.frozen_stages``, a frozen warm-up, ``head_only``) in eval mode on purpose, to keep their
#   BatchNorm statistics, and it is the only LightningModule these entry points train;
# - onnx_ir's INFO lines while torch.onnx exports (13 per export);
# - torch.jit.trace's FutureWarning that TorchScript is deprecated: README.md says so once, and the export
#   still checks the file it writes;
# - Lightning's "The `srun` command is available on your system but is not used", on every run of a machine
#   with SLURM installed, outside a SLURM job (no SLURM_JOB_ID): there nothing is to be done. Inside an
#   allocation (salloc) it is kept: there it says how to let Lightning take the job's tasks as processes.
# The entry points (train.py, sweep.py, the commands) call ``silence_library_noise()`` once.

from __future__ import annotations

import logging
import os
import warnings


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def silence_library_noise() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    warnings.filterwarnings("ignore", message=r".*TorchScript.*deprecated", category=DeprecationWarning)
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)
