"""Stage 4, training: SGD as our_cnn_train.m, its checkpoints and its plots."""
