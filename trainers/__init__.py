"""nnU-Net trainer subclasses (installed as ``nnunet_losses.trainers``); see the project issues for status."""
