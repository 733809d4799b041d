"""``train.py`` under accelerate's FSDP plugin on CPU processes, for tests/test_sharding.py.

accelerate 1.x prepares FSDP only for accelerator devices: on the CPU it keeps MULTI_CPU even when asked for FSDP.
This launcher lets it choose, then turns its state to FSDP with the plugin it built from the FSDP_* variables, so
``Accelerator.prepare`` wraps the model in torch's FSDP (which runs on the CPU over gloo) and the trainer takes its
FSDP path end to end. A test harness only: users run FSDP on GPUs through configs/accelerate/fsdp-2gpu.yaml.

    ACCELERATE_USE_CPU=1 ACCELERATE_USE_FSDP=true FSDP_...=... torchrun --nproc_per_node=2 tests/fsdp_trainer.py \\
        generator --recipe ...
"""

import sys

import accelerate.state
import torch
from accelerate.utils import DistributedType

_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
        self.device = torch.device("cpu")  # FSDP compares it with the parameters' device ("cpu", not "cpu:0")


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from visgen.cli.train import main

    sys.exit(main(sys.argv[1:]))
