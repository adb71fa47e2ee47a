"""Thin module for nnU-Net's trainer search (``export nnUNet_extTrainer=$(nnunet-losses trainer-path)``).

nnU-Net imports every module of this folder as a top-level module and removes it from ``sys.modules`` afterwards.
The classes are therefore not defined here but imported from ``nnunet_losses.trainers``: the class nnU-Net finds
is the package's own class object, importable and picklable under its real module name.
Keep this folder free of other modules (nnU-Net would import each of them on every trainer lookup).
"""
from nnunet_losses.trainers import *  # noqa: F401,F403  (only the trainer classes: see its __all__)
