"""Learning: the architecture and model registries, the training recipe, one member's fit-evaluate-write (folds and
refit over it), callbacks, the hardware and distributed set-up, and inference of a trained model."""
