"""pathrt beyond one process: batch explanation on Ray Data (`explain_dataset`) and the loopback-only
network namespace its tests and benchmark run in. Generator training with DDP lives in
`pathrt.training` (`pathrt train --nproc N`)."""

from pathrt.distributed.loopback import in_loopback_namespace, loopback_command
from pathrt.distributed.ray_explain import explain_dataset, read_results

__all__ = ["explain_dataset", "in_loopback_namespace", "loopback_command", "read_results"]
