"""eva02.seg: the TrV on mmsegmentation (UperNet, Mask2Former) without a fork of mmseg.

Importing this package registers, in mmseg / mmengine registries (adding names, replacing none):
  - `EVA02` (mmseg MODELS): the TrV backbone with the official 4-level pyramid (backbone.py);
  - `LayerDecayOptimWrapperConstructor` (mmengine OPTIM_WRAPPER_CONSTRUCTORS): layer-wise lr decay (optim.py);
  - `CropAwareEncoderDecoder` (mmseg MODELS): slide inference that works for Mask2Former (segmentor.py);
  - `WeightsOnlyCheckpointHook` (mmseg HOOKS) and the file backend `atomic_local`: checkpoints that torch loads
    with weights_only=True, written atomically (hooks.py);
  - `CPUDistributedDataParallel` (mmengine MODEL_WRAPPERS): DDP on CPU with gloo (cpu_ddp.py);
  - `CheckedADE20KDataset`, `CheckedCOCOStuffDataset` (mmseg DATASETS) (datasets.py);
  - `OwnSegDataset` (mmseg DATASETS): your own data in mmseg's custom layout, classes from DATA/classes.txt, and
    `use_own_data(cfg, DATA)`, which points a config at it (own_data.py); instance annotations (COCO, YOLO,
    LabelMe, CVAT) and Pascal VOC segmentation folders written into that layout (own_formats.py);
  - `SegmentorWeightsHook` (mmseg HOOKS): training starts from a whole segmentor checkpoint, class layers re-laid
    for the training set's classes (hooks.py);
  - `RunLogHook` (mmseg HOOKS): throughput, memory and drawn validation predictions in TensorBoard, curves.png at
    the end of training (hooks.py);
  - `ShortSideResize` (mmseg TRANSFORMS): the official multi-scale test resize (transforms.py).
Loading checkpoints, the official release's included: `load_segmentor_checkpoint`, `load_backbone_weights`.
Inference: mmseg's own `init_model` + `inference_model` and `MMSegInferencer` on our configs and checkpoints, or
`SegPredictor` (predictor.py) for official checkpoints, test-time augmentation, batches and own-data classes.
Configs name it in `custom_imports = dict(imports=["eva02.seg"])`; the demo's generated data and its
`ShapesDataset` are in eva02.seg.demo.
"""
from .backbone import EVA02
from .checkpoint import IncompleteCheckpointError, load_backbone_weights, load_segmentor_checkpoint
from .cpu_ddp import CPUDistributedDataParallel
from .datasets import CheckedADE20KDataset, CheckedCOCOStuffDataset
from .hooks import RunLogHook, SegmentorWeightsHook, WeightsOnlyCheckpointHook
from .optim import LayerDecayOptimWrapperConstructor, fp32_without_gpu
from .own_data import OwnSegDataset, read_classes, use_own_data
from .predictor import SegPredictor, overlay
from .segmentor import CropAwareEncoderDecoder
from .transforms import ShortSideResize

__all__ = [
    "EVA02", "CropAwareEncoderDecoder", "LayerDecayOptimWrapperConstructor", "WeightsOnlyCheckpointHook",
    "CPUDistributedDataParallel", "CheckedADE20KDataset", "CheckedCOCOStuffDataset", "ShortSideResize",
    "fp32_without_gpu", "IncompleteCheckpointError", "load_backbone_weights", "load_segmentor_checkpoint",
    "OwnSegDataset", "read_classes", "use_own_data", "SegmentorWeightsHook", "RunLogHook", "SegPredictor", "overlay",
]
