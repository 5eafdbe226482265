"""eva02: the EVA-02 vision transformer (TrV) for detection, segmentation and MIM pre-training.

`backbone/` (the encoder), `common/` (what tools and frameworks share), `det/` and `seg/` install as
`eva02.backbone`, `eva02.common`, `eva02.det` and `eva02.seg`, so nothing generic lands at the top of
site-packages. `pip install -e .` needs only torch; the extras add the
frameworks. `make install` builds the full pinned stack (mmcv with ops, detectron2), see docs/install.md.
"""
from setuptools import setup

setup(
    name="eva02",
    version="0.1.0",
    description="EVA-02 (TrV) for dense prediction: detectron2 detection, mmseg segmentation, MIM pre-training",
    python_requires=">=3.10",
    # `eva02` itself is an implicit namespace package: only the mapped folders exist.
    packages=["eva02.backbone", "eva02.backbone.mim", "eva02.common", "eva02.det", "eva02.seg"],
    package_dir={"eva02.backbone": "backbone", "eva02.common": "common", "eva02.det": "det", "eva02.seg": "seg"},
    install_requires=["torch>=2.1", "numpy"],
    extras_require={
        # detectron2 is not on the registry under its own name; `make install` installs it (see docs/install.md).
        "det": ["fvcore", "iopath", "pycocotools", "lvis", "omegaconf", "hydra-core", "opencv-python",
                "scipy", "matplotlib", "tqdm"],
        # mmcv must be the full build with compiled ops; `make install` builds it (see docs/install.md).
        "seg": ["mmengine==0.10.7", "mmsegmentation==1.2.2", "mmdet==3.3.0", "opencv-python", "tqdm"],
        "xformers": ["xformers"],
        "onnx": ["onnx", "onnxruntime"],  # tools/export_onnx.py
        "all": ["fvcore", "iopath", "pycocotools", "lvis", "omegaconf", "hydra-core", "opencv-python",
                "scipy", "matplotlib", "tqdm", "mmengine==0.10.7", "mmsegmentation==1.2.2", "mmdet==3.3.0",
                "timm", "safetensors", "onnx", "onnxruntime"],
    },
)
