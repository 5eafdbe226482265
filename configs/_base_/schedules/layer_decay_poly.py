# The EVA-02 seg schedule (paper Tables 34-36): AdamW with layer-wise lr decay, iteration-based; linear decay (poly,
# power 1) to zero over the whole run, with the official linear warmup (ratio 1e-6) as a multiplier on top:
# mmengine multiplies overlapping schedulers, so lr(t) = base (1 - t / T) w(t).
# A config states its table's lr, layer decay and max_iters, and ends the poly with its run (a base sees none of
# the config's values): param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], end=...)].
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", betas=(0.9, 0.999), weight_decay=0.05),  # Tables 34-36: AdamW, wd 0.05
    constructor="LayerDecayOptimWrapperConstructor",
    # Weight decay spares 1-D parameters and biases only: pos_embed and cls_token are decayed, as in the
    # published runs; paramwise_cfg.no_decay_names=("pos_embed", "cls_token") exempts them too.
)
warmup_iters = 1500  # official EVA-02 seg recipe (BEiT's); the paper gives no warmup length
param_scheduler = [
    # end + 1: mmengine's schedulers reach their final value one step before `end`
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0),  # end: max_iters + 1, from the config
]
train_cfg = dict(type="IterBasedTrainLoop", val_interval=4000)  # max_iters: the config's
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # backend "atomic_local" (eva02.seg.hooks): checkpoints written to a temporary file renamed into place
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=4000, max_keep_ckpts=3, save_best="mIoU",
                    backend_args=dict(backend="atomic_local")),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
