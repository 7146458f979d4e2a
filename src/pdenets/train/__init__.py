"""Training machinery: the engine, recipes, checkpoints, the NaN guard, distributed training, reports."""
