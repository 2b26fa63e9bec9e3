"""Stage 1, runtime: where and how code runs (the device and float32 rules, SIGTERM, several GPUs)."""
