# mmseg's runtime (default scope, env, visualizer, log processor, TTA model) plus what every EVA-02 seg run needs.
_base_ = ["mmseg::_base_/default_runtime.py"]
custom_imports = dict(imports=["eva02.seg"], allow_failed_imports=False)  # registers the EVA-02 modules

# mmengine's visualizer backends: the local files (json scalars, drawn images) and TensorBoard events
vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
# several processes (torchrun): "ddp" (mmengine's DistributedDataParallel), or "fsdp" to shard the weights, gradients
# and AdamW state over them (PyTorch FSDP2, one unit per TrV block; eva02.seg.sharding; tools/train_seg.py --fsdp)
parallel = "ddp"
custom_hooks = [
    # throughput, memory and drawn validation predictions in TensorBoard; curves.png at the end (eva02.seg.hooks)
    dict(type="RunLogHook", log_images=4),
    dict(type="WeightsOnlyCheckpointHook"),  # checkpoints loadable with weights_only=True
    dict(type="ExactResumeHook"),  # a resumed run continues exactly; killed writes' temporary files removed
]
