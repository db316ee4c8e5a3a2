"""MNMEF, the learned ensemble filter of "Learning Enhanced Ensemble Filters" (arXiv 2504.17836).

Modules: set_transformer (ensemble → feature), model (analysis map), rollout (differentiable training
rollout and loss), train (pretraining / fine-tuning, DDP), checkpoint (files + sidecars), filter
(engine adapter), pretrained (shipped weights), commands (CLI). Import submodules directly; this package
imports nothing heavy so that `daviz` works without torch.
"""
