"""Latent-EnSF (arXiv 2409.00127): EnSF in the latent space of a coupled VAE.

Modules: vae (the coupled VAE in torch, and its numpy copy for inference), filter (the LatentEnSF engine
filter: numpy only), train (data from the "train" random streams, training, held-out metrics, the small
filter-settings search), pretrained (shipped weights in pretrained/latent_*: safe loading, one-line
CheckpointErrors), commands (`daviz train-latent`). Import submodules directly: this package imports
nothing heavy so that `daviz` works without torch.
"""
