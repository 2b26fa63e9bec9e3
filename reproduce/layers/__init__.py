"""Stage 2, layers: the building blocks of a network (conv_mask, the losses, padded convolution,
layer geometry, SimpleNN, the torchvision blocks)."""
