"""Stage 3, models: the networks (one registry of rows, one builder, the pretrained model files).

`network_init` (the builder every network goes through) is importable from here, as the README's
`reproduce.models.network_init`."""
from reproduce.models.builder import network_init

__all__ = ["network_init"]
