"""Test-only nnU-Net trainers (found through nnUNet_extTrainer): nnU-Net's default trainer, shortened.

One epoch of a few iterations and no test-time mirroring, so that a CPU run that produces a real fold folder
(checkpoint, validation/*.nii.gz, *.npz, *.pkl, summary.json) takes seconds. Everything else -- network,
preprocessing, validation, export -- is nnU-Net's own code.
"""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_EvalTiny(nnUNetTrainer):
    iterations = 3

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, None

