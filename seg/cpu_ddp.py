"""Multi-process training on CPU (gloo) with mmengine, which assumes GPUs when launched by torchrun:
its `init_dist` calls torch.cuda.set_device and its DDP wrapper passes device_ids=[LOCAL_RANK]. The train tool
initializes the gloo process group itself and wraps the model with this class instead."""
from __future__ import annotations

from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

__all__ = ["CPUDistributedDataParallel"]


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for CPU modules (device_ids must be None there)."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)
