"""Vision arm: images, the project's own CIFAR-10 ViT, embedding capture, complexity proxies.

* :mod:`.images`: CIFAR-10 from the offline tarball, image folders, Hugging Face datasets (no torchvision).
* :mod:`.train_vit`: train the small CIFAR-10 ViT (CLI ``python -m softsae_lib.vision.train_vit``).
* :mod:`.export`: write a ViT as a Hugging Face folder (fp16 safetensors, image processor, model card).
* :mod:`.capture`: load ViT / CLIP encoders and capture CLS / patch embeddings into the activation cache.
* :mod:`.proxies`: per-image complexity proxies (compressed size, edge density, classifier entropy).
* :mod:`.experiment`: glue for notebook 04 (embeddings as tensors, per-class tables, image grids).

Nothing is imported here, so that ``import softsae_lib.vision.images`` does not import ``transformers``.
"""
