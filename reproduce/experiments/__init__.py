"""Stage 6, experiments: demo.m's pipeline, the ablation, pretraining, the paper runner and its
published numbers, the real-images experiment, the HTML report, and the command lines."""
