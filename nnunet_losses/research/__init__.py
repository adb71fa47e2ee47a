"""The lab around the loss library: the volume-bias paper's exact theory (:mod:`.theory`), phantoms whose expected
reference volume is known (:mod:`.phantom`), small synthetic nnU-Net datasets (:mod:`.synthetic`) and the
volume-bias demo (:mod:`.demo`). This layer may import the loss core, the trainers and the evaluation; nothing
imports it but the CLI (see docs/architecture.md)."""

#: the paper this research code reproduces, as user-facing text names it
PAPER = "Bertels et al. 2020 (Optimization with soft Dice can lead to a volumetric bias)"
#: the short form for plot titles
PAPER_SHORT = "Bertels et al. 2020"
