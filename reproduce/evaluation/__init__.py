"""Stage 5, evaluation: the measures of a trained net (binary error, location instability, part
interpretability) and the receptive-field drawings.

    net_features           getCNNFeature.m batched: the images through the net to the measured layer
    location_instability   computeStability.m, getDistSqrtVar.m (one category and multi-class)
    net_evaluation         showResults.m: a trained net loaded, its binary error and location instability
    part_interpretability  the papers' part interpretability (Table 1 / 2; no MATLAB counterpart)
    receptive_fields       step_drawRF.m, drawEdge.m: the receptive-field pictures
"""
