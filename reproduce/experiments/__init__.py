"""Stage 6, experiments: demo.m's pipeline, the ablation, pretraining, the paper runner and its
published numbers, the real-images experiment, the HTML report, and the command lines.

The paper runner (`python -m reproduce.paper`) in one module per job: `grid` (the runs the options
ask for, where their data is), `grid_runner` (running them), `results_store` (the results file and
one run's record), `machine_info`, `comparison_tables` (measured beside published), `ablation_cells`
(--ablation / --pretrain-finetune), and `paper` (its command line). `options` holds the options and
checks every command line shares."""
