"""Stage 3, models: the networks (one registry of rows, one builder, the pretrained model files).

`network_init` (the builder every network goes through) is importable from here, as the README's
`reproduce.models.network_init`.

| module | holds |
|---|---|
| `registry` | `MODELS`: one row per network with every fact of it; trainOpts, `init_weight` |
| `builder` | `network_init` / `create_network`: the one builder |
| `matconvnet_nets`, `torchvision_nets` | the two families' layer lists |
| `head_blocks` | add_block.m / add_block_mask.m's layers, for both families |
| `pretrained_files` | the MatConvNet model files: download, verify, read |
"""
from reproduce.models.builder import network_init

__all__ = ["network_init"]
