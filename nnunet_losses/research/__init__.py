"""The lab around the loss library: seed 001's exact theory (:mod:`.theory`), phantoms whose expected reference
volume is known (:mod:`.phantom`), small synthetic nnU-Net datasets (:mod:`.synthetic`) and the volume-bias demo
(:mod:`.demo`). This layer may import the loss core, the trainers and the evaluation; nothing imports it but the
CLI (see docs/architecture.md)."""
