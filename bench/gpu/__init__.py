"""The GPU check's parts; ``bench/gpu_check.py`` is the command.

``workload``: sizes (one H200, or the CPU smoke), synthetic CIFAR-shaped data, the recorder every
part writes its figures through. ``loop``: the bf16 peak and the training loop's throughput.
``trials``: trials per hour with whole and fractional GPUs through Ray Tune. ``study``: a short
study end to end through ``search/run.py``. ``parts``: the registry of parts, one run per
process. ``report``: the derived figures and the tables.
"""
