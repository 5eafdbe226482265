"""eva02.seg: the TrV on mmsegmentation (UperNet, Mask2Former) without a fork of mmseg.

Importing this package registers, in mmseg / mmengine registries:
  - `EVA02` (mmseg MODELS): the TrV backbone with the official 4-level pyramid (backbone.py);
  - `LayerDecayOptimWrapperConstructor` (mmengine OPTIM_WRAPPER_CONSTRUCTORS): layer-wise lr decay (optim.py);
  - `CheckedADE20KDataset`, `CheckedCOCOStuffDataset`, `ShapesDataset` (mmseg DATASETS) (datasets.py).
Configs name it in `custom_imports = dict(imports=["eva02.seg"])`.
"""
from .backbone import EVA02
from .datasets import CheckedADE20KDataset, CheckedCOCOStuffDataset, ShapesDataset
from .demo_data import SHAPES_CLASSES, SHAPES_PALETTE, make_shapes_dataset
from .optim import LayerDecayOptimWrapperConstructor

__all__ = [
    "EVA02", "LayerDecayOptimWrapperConstructor", "CheckedADE20KDataset", "CheckedCOCOStuffDataset", "ShapesDataset",
    "SHAPES_CLASSES", "SHAPES_PALETTE", "make_shapes_dataset",
]
