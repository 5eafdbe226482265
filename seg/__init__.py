"""eva02.seg: the TrV on mmsegmentation (UperNet, Mask2Former) without a fork of mmseg.

Importing this package registers, in mmseg / mmengine registries:
  - `EVA02` (mmseg MODELS): the TrV backbone with the official 4-level pyramid (backbone.py);
  - `LayerDecayOptimWrapperConstructor` (mmengine OPTIM_WRAPPER_CONSTRUCTORS): layer-wise lr decay (optim.py);
  - `CropAwareEncoderDecoder` (mmseg MODELS): slide inference that works for Mask2Former (segmentor.py);
  - `WeightsOnlyCheckpointHook` (mmseg HOOKS): checkpoints that torch loads with weights_only=True (hooks.py);
  - `CPUDistributedDataParallel` (mmengine MODEL_WRAPPERS): DDP on CPU with gloo (cpu_ddp.py);
  - `CheckedADE20KDataset`, `CheckedCOCOStuffDataset`, `ShapesDataset` (mmseg DATASETS) (datasets.py).
Configs name it in `custom_imports = dict(imports=["eva02.seg"])`.
"""
from .backbone import EVA02
from .cpu_ddp import CPUDistributedDataParallel
from .datasets import CheckedADE20KDataset, CheckedCOCOStuffDataset, ShapesDataset
from .demo_data import SHAPES_CLASSES, SHAPES_PALETTE, make_shapes_dataset
from .hooks import WeightsOnlyCheckpointHook
from .optim import LayerDecayOptimWrapperConstructor
from .segmentor import CropAwareEncoderDecoder

__all__ = [
    "EVA02", "CropAwareEncoderDecoder", "LayerDecayOptimWrapperConstructor", "WeightsOnlyCheckpointHook",
    "CPUDistributedDataParallel", "CheckedADE20KDataset", "CheckedCOCOStuffDataset", "ShapesDataset",
    "SHAPES_CLASSES", "SHAPES_PALETTE", "make_shapes_dataset",
]
