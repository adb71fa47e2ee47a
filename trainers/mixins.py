"""The one place where our trainers differ from nnU-Net's ``nnUNetTrainer``: the loss, short runs, the paper optimiser.

:class:`LossTrainerMixin` replaces ``nnUNetTrainer._build_loss`` by ``get_loss(loss_name, **loss_kwargs)`` with
every nnU-Net setting filled in exactly as nnU-Net's default trainer passes it to its own loss:

* ``region_based = label_manager.has_regions`` (sigmoid over regions instead of softmax over labels);
* ``ignore_label = label_manager.ignore_label`` (for regions nnU-Net appends the ignore mask as last target
  channel; the losses expect exactly that);
* ``batch_dice = configuration_manager.batch_dice`` and ``ddp = is_ddp`` (statistics all-gathered across ranks);
* deep supervision: one weight per output, ``1/2**i`` normalised, lowest resolution 0 -- or ``1e-6`` under DDP
  without ``torch.compile``, nnU-Net's own rule (:func:`deep_supervision_weights`);
* ``class_priors`` (weighted CE): computed from the fold's training labels and cached next to the plans
  (:mod:`nnunet_losses.trainers.priors`).

Only the arguments the chosen loss accepts are passed, so a trainer is ``loss_name`` plus ``loss_kwargs``::

    class nnUNetTrainer_DSCpp_g3p5(nnUNetTrainer_DSCpp):
        loss_kwargs = {"gamma": 3.5}

``loss_kwargs`` of the classes in the MRO that use the same loss are merged (subclass wins), so a variant of a
variant keeps its parents' settings.

Short runs (tests, demos): the environment variables ``NNUNET_LOSSES_EPOCHS``, ``NNUNET_LOSSES_ITERATIONS`` and
``NNUNET_LOSSES_VAL_ITERATIONS`` override ``num_epochs``, ``num_iterations_per_epoch`` and
``num_val_iterations_per_epoch`` of every trainer of this package (positive integers; unset = nnU-Net's 1000 / 250
/ 50). Use the same values with ``--c`` as for the run you continue.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_losses.deep_supervision import nnunet_deep_supervision_weights
from nnunet_losses.registry import get_loss, loss_arguments

#: environment variable -> trainer attribute it overrides (short runs for tests and demos)
SHORT_RUN_ENV = {
    "NNUNET_LOSSES_EPOCHS": "num_epochs",
    "NNUNET_LOSSES_ITERATIONS": "num_iterations_per_epoch",
    "NNUNET_LOSSES_VAL_ITERATIONS": "num_val_iterations_per_epoch",
}


def short_run_overrides(environ: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    """``{trainer attribute: value}`` from the ``NNUNET_LOSSES_*`` variables that are set (and non-empty)."""
    environ = os.environ if environ is None else environ
    out = {}
    for var, attr in SHORT_RUN_ENV.items():
        raw = environ.get(var, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{var} must be a positive integer, got {raw!r}")
        out[attr] = value
    return out


def deep_supervision_weights(trainer: nnUNetTrainer) -> Optional[List[float]]:
    """nnU-Net's deep supervision weights for ``trainer`` (``None`` when deep supervision is off).

    ``nnUNetTrainer._build_loss``: one weight per output scale, ``1/2**i`` normalised to sum 1, the lowest
    resolution 0 -- except under DDP without ``torch.compile``, where it is ``1e-6`` (DDP complains about unused
    parameters otherwise).
    """
    if not trainer.enable_deep_supervision:
        return None
    n_outputs = len(trainer._get_deep_supervision_scales())
    ddp_rule = bool(trainer.is_ddp and not trainer._do_i_compile())
    return list(nnunet_deep_supervision_weights(n_outputs, ddp=ddp_rule))


class ShortRunMixin:
    """Reads the ``NNUNET_LOSSES_*`` short-run variables (see the module docstring)."""

    # nnU-Net records its constructor arguments by name (``locals()``), so the signature must be spelled out
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        overrides = short_run_overrides()  # before nnUNetTrainer.__init__, which creates the output folder
        super().__init__(plans, configuration, fold, dataset_json, device)
        for attr, value in overrides.items():
            setattr(self, attr, value)
        if overrides:
            self.print_to_log_file("nnunet-losses short run (NNUNET_LOSSES_* environment variables): " +
                                   ", ".join(f"{k}={v}" for k, v in overrides.items()))


#: loss arguments that nnU-Net's plans, dataset.json and launch determine; ``loss_kwargs`` may not set them
NNUNET_SETTINGS = ("region_based", "ignore_label", "batch_dice", "ddp", "deep_supervision_weights")


def nnunet_loss_settings(label_manager, configuration_manager, is_ddp: bool,
                         ds_weights: Optional[List[float]]) -> Dict[str, object]:
    """The loss arguments exactly as nnU-Net's default trainer passes them to its own loss."""
    return {"region_based": bool(label_manager.has_regions), "ignore_label": label_manager.ignore_label,
            "batch_dice": bool(configuration_manager.batch_dice), "ddp": bool(is_ddp),
            "deep_supervision_weights": ds_weights}


class LossTrainerMixin(ShortRunMixin):
    """Builds the loss ``get_loss(loss_name, **kwargs)`` with nnU-Net's settings; see the module docstring.

    Put it before an ``nnUNetTrainer`` (sub)class: ``class MyTrainer(LossTrainerMixin, nnUNetTrainer)``.
    ``loss_kwargs`` are checked when the trainer is constructed, before nnU-Net creates any folder: a name the
    loss does not take, one of :data:`NNUNET_SETTINGS`, or a value the loss rejects is a one-line ``ValueError``.
    """
    #: name in :func:`nnunet_losses.available_losses`
    loss_name: str = "dice_ce"
    #: the loss's own hyper-parameters (merged along the MRO; see the module docstring)
    loss_kwargs: Mapping[str, object] = {}
    #: where the loss comes from (shown by ``nnunet-losses trainers`` and in the training log)
    paper: str = ""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.check_loss_kwargs(plans, configuration, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)

    @classmethod
    def check_loss_kwargs(cls, plans: dict, configuration: str, dataset_json: dict) -> None:
        """Build the loss once from the plans and dataset.json with ``loss_kwargs``: fail now, not epochs later."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        user, accepted = cls.effective_loss_kwargs(), loss_arguments(cls.loss_name)
        unknown = sorted(set(user) - set(accepted))
        if unknown:
            raise ValueError(f"{cls.__name__}.loss_kwargs: {unknown} not arguments of loss {cls.loss_name!r} "
                             f"(it takes {sorted(set(accepted) - set(NNUNET_SETTINGS))})")
        fixed = sorted(set(user) & set(NNUNET_SETTINGS))
        if fixed:
            raise ValueError(f"{cls.__name__}.loss_kwargs sets {fixed}, which nnU-Net takes from the plans, "
                             f"dataset.json (ignore label, regions) and the launch (DDP); remove it from loss_kwargs "
                             f"and change the dataset or plans instead")
        plans_manager = PlansManager(plans)
        label_manager = plans_manager.get_label_manager(dataset_json)
        settings = nnunet_loss_settings(label_manager, plans_manager.get_configuration(configuration), False, None)
        kwargs = {k: v for k, v in settings.items() if k in accepted}
        if "class_priors" in accepted and "class_priors" not in user:  # the real ones need the training labels
            n = label_manager.num_segmentation_heads
            kwargs["class_priors"] = [1.0 / n] * n
        try:
            get_loss(cls.loss_name, **kwargs, **user)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{cls.__name__}: loss {cls.loss_name!r} rejects loss_kwargs {user}: {e}") from None

    @classmethod
    def effective_loss_kwargs(cls) -> Dict[str, object]:
        """``loss_kwargs`` merged over the MRO (base classes first) among classes using the same loss."""
        merged: Dict[str, object] = {}
        for klass in reversed(cls.__mro__):
            if "loss_kwargs" in vars(klass) and getattr(klass, "loss_name", None) == cls.loss_name:
                merged.update(vars(klass)["loss_kwargs"])
        return merged

    def loss_arguments(self) -> Dict[str, object]:
        """All keyword arguments for :func:`get_loss`: nnU-Net's settings, computed ones, then ``loss_kwargs``."""
        accepted = loss_arguments(self.loss_name)
        user = self.effective_loss_kwargs()
        nnunet = nnunet_loss_settings(self.label_manager, self.configuration_manager, self.is_ddp,
                                      deep_supervision_weights(self))
        kwargs = {k: v for k, v in nnunet.items() if k in accepted}
        if "class_priors" in accepted and "class_priors" not in user:
            from nnunet_losses.trainers.priors import trainer_class_priors
            kwargs["class_priors"] = trainer_class_priors(self)
        kwargs.update(user)
        return kwargs

    def _build_loss(self):
        kwargs = self.loss_arguments()
        loss = get_loss(self.loss_name, **kwargs)
        self.print_to_log_file(f"nnunet-losses: loss {self.loss_name!r}"
                               + (f" ({self.paper})" if self.paper else "") + f": {loss!r}")
        return loss


class ValidationPlateauLR:
    """Adam schedule of the seed papers: multiply the learning rate by ``factor`` after ``patience`` epochs
    without a new best validation loss (Bertels, Robben et al. 2019: factor 1/5, patience 75 epochs).

    Called like nnU-Net's schedulers, ``step(current_epoch)`` at the start of each epoch. It keeps no state of
    its own: the learning rate is replayed from the validation losses in nnU-Net's logger, which is saved in
    every checkpoint, so ``--c`` continues with the same rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, logger, factor: float = 0.2,
                 patience: int = 75):
        self.optimizer, self.initial_lr, self.logger = optimizer, float(initial_lr), logger
        self.factor, self.patience = float(factor), int(patience)

    def lr_for(self, val_losses) -> float:
        best, since, n_drops = np.inf, 0, 0
        for loss in val_losses:
            if loss < best:
                best, since = loss, 0
            else:
                since += 1
                if since >= self.patience:
                    n_drops, since = n_drops + 1, 0
        return self.initial_lr * self.factor ** n_drops

    def step(self, current_epoch=None):
        losses = list(self.logger.get_value("val_losses", step=None) or [])
        if current_epoch is not None:
            losses = losses[:current_epoch]
        lr = self.lr_for([float(x) for x in losses])
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class PaperAdamMixin:
    """Optimiser of the seed papers: Adam without weight decay, :class:`ValidationPlateauLR`.

    ``paper_lr`` is the initial learning rate (1e-3 for the volume-bias paper's networks, 1 for its LR model,
    1e-4 for fine-tuning in Bertels, Eelbode et al. 2019). nnU-Net's gradient clipping (norm 12) is kept; the
    papers' early stopping is not (nnU-Net trains a fixed number of epochs and keeps checkpoint_best).
    """
    paper_lr: float = 1e-3
    plateau_factor: float = 0.2
    plateau_patience: int = 75

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = float(self.paper_lr)
        self.weight_decay = 0.0

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        scheduler = ValidationPlateauLR(optimizer, self.initial_lr, self.logger, self.plateau_factor,
                                        self.plateau_patience)
        return optimizer, scheduler


class FineTuneMixin(PaperAdamMixin):
    """Second stage of Bertels, Eelbode et al. 2019's protocol ("Optimizing the Dice score and Jaccard index ...:
    theory & practice", Sect. 3): continue a CE-trained network with another loss, Adam at lr 1e-4. Start it with
    nnU-Net's ``-pretrained_weights <CE run>/fold_X/checkpoint_final.pth``."""
    paper_lr = 1e-4
