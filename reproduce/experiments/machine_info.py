"""Where a run ran (host, OS, CPU, torch, the GPU), recorded with each of reproduce.paper's runs.
Not a port of an original file.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from reproduce.runtime.device import tf32_allowed

__all__ = ["machine_info"]


def machine_info(device: str) -> dict:
    """Where a run ran: host, OS, CPU, cores, torch, the device (the GPU's name for CUDA)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"host": platform.node(), "os": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda_tf32"] = tf32_allowed()          # False: IEEE float32 convolutions, as MATLAB
    return info
