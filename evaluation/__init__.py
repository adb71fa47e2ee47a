"""Evaluation of nnU-Net predictions (installed as ``nnunet_losses.evaluation``)."""
