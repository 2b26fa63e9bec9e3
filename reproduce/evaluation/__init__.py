"""Stage 5, evaluation: the measures of a trained net (binary error, location instability, part
interpretability) and the receptive-field drawings."""
