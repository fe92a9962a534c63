"""Training with the paper's recipe: ``deeplabv1.train.loop.train(TrainConfig(...)) -> Path``.

Modules: ``config`` (TrainConfig), ``optim`` (parameter groups, Caffe SGD, step policy),
``loss`` (cross-entropy over valid score-grid pixels), ``sampler`` (resumable, sharded data
order), ``build`` (network init/freezing, dataset, loader), ``state`` (checkpoints, RNG states),
``distributed`` (DDP via torchrun), ``logger`` (tqdm, JSONL, TensorBoard), ``loop`` (the loop).
See docs/training.md.
"""
