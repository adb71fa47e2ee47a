"""A loss study in one call: trainers x folds trained with nnU-Net's own ``nnUNetv2_train --npz``, every trainer
evaluated over its folds, compared with the baseline and pairwise, one report (docs: README, "A loss study").

>>> from nnunet_losses.study import load_study, run_study, study_status
>>> study = load_study("study.toml")
>>> run_study(study)            # trains what is missing, evaluates, compares, writes report.md / report.html
>>> study_status(study)         # {(trainer, fold): RunStatus}
"""
from nnunet_losses.study.config import Study, StudyError, load_study
from nnunet_losses.study.pipeline import finish_study, run_study
from nnunet_losses.study.runs import RunStatus, study_status

__all__ = ["Study", "StudyError", "load_study", "run_study", "finish_study", "study_status", "RunStatus"]
