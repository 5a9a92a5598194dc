"""Test harness only (on PYTHONPATH of the launched ranks): DeepSpeed with several ranks on a CPU.

accelerate starts DeepSpeed only when it is not told ``cpu``, and then picks a process-group
backend from the accelerator it finds; on a machine with none it picks no backend, so every rank
is told it is process 0 of 1 while DeepSpeed joins the ranks over gloo. This gives accelerate the
backend DeepSpeed's CPU accelerator uses (gloo), the one thing a GPU machine gets (nccl) and this
one lacks; everything else (DeepSpeed's engines, ZeRO partitioning, the collectives) is the real code.
"""

import os

if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and "LOCAL_RANK" in os.environ:
    from accelerate.state import PartialState

    _prepare_backend = PartialState._prepare_backend

    def _prepare_backend_gloo_for_deepspeed(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, distributed_type = _prepare_backend(self, cpu, sagemaker_dp, backend)
        return backend or "gloo", distributed_type

    PartialState._prepare_backend = _prepare_backend_gloo_for_deepspeed
