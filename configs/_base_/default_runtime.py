# mmseg's runtime (default scope, env, visualizer, log processor, TTA model) plus what every EVA-02 seg run needs.
_base_ = ["mmseg::_base_/default_runtime.py"]
custom_imports = dict(imports=["eva02.seg"], allow_failed_imports=False)  # registers the EVA-02 modules

custom_hooks = [
    dict(type="WeightsOnlyCheckpointHook"),  # checkpoints loadable with weights_only=True
    dict(type="ExactResumeHook"),  # a resumed run continues exactly; killed writes' temporary files removed
]
