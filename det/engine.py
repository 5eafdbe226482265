"""Training and evaluation of EVA-02 detectors from a LazyConfig (what `tools/train_det.py` runs).

`run(cfg, eval_only, resume)` builds the model, loads weights (`train.init_checkpoint`, resume), trains with
`EVATrainer` (AMP fp16 / bf16, EMA; DDP, or FSDP2 sharding with `train.parallel="fsdp"`) under detectron2's hooks
(lr schedule, atomic periodic checkpoints, evaluation, metric logging), evaluates with the config's evaluator
(unreadable images skipped, named and counted), prints the AP table, writes `results.json`, draws predictions of
the first `train.save_predictions` test images and, with `train.results_dir`, writes the COCO results json + zip
(COCO test-dev). Works on CPU, under DDP and sharded by FSDP2.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import SimpleTrainer, create_ddp_model, hooks
from detectron2.engine.train_loop import HookBase, TrainerBase
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter, get_event_storage
from detectron2.utils.registry import locate

from eva02.backbone.checkpoint import unwrap_model
from eva02.common.files import atomic_write, remove_stale_temporaries
from eva02.common.memory import peak_memory_mib
from eva02.common.precision import autocast, autocast_dtype
from eva02.common.runlog import draw_curves, tensorboard_command
from eva02.common.sharding import (OPTIMIZER_BY_NAME, by_name, full_optimizer_state, load_optimizer_state, shard,
                                   unsharded)

from .checkpoint import EVACheckpointer
from .data import check_training_dataset, register_all
from .ema import ModelEMA
from .resume import ResumableSampler, RNGState, rng_preserved
from .tta import build_tta
from .unreadable import ReadableOnly, SkipUnreadable

__all__ = ["EVATrainer", "EMAHook", "RunStatsHook", "ServerResultsWriter", "run", "do_train", "do_test",
           "build_model", "instantiate_with", "resolve_device", "config_precision", "training_dtype", "PARALLEL"]

logger = logging.getLogger("eva02.det")

# train.parallel: how several processes train. "ddp": each holds the whole model (DistributedDataParallel);
# "fsdp": PyTorch FSDP2, one unit per TrV block and the rest of the detector as the root unit (parameters,
# gradients and AdamW state sharded over the processes; eva02.common.sharding).
PARALLEL = ("ddp", "fsdp")


def resolve_device(cfg) -> str:
    """cfg.train.device, or "cpu" (with a warning) when it asks for CUDA on a machine without a GPU."""
    device = cfg.train.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"train.device={device!r} but no GPU is available: running on the CPU")
        return "cpu"
    return device


def config_precision(cfg) -> str:
    """The config's precision name (eva02.common.precision): fp32 unless train.amp.enabled, then
    train.amp.precision (fp16 / bf16)."""
    amp = cfg.train.amp
    if not amp.enabled:
        return "fp32"
    precision = amp.get("precision", "fp16")
    if precision not in ("fp16", "bf16"):
        raise ValueError(f"train.amp.precision={precision!r}: use fp16 or bf16 (or train.amp.enabled=False for fp32)")
    return precision


def training_dtype(cfg, device: str) -> torch.dtype | None:
    """Autocast dtype of the config's precision on `device` (None: fp32). fp16 on a CPU becomes bf16 (CPU
    autocast has few float16 kernels)."""
    precision = config_precision(cfg)
    if device == "cpu" and precision == "fp16":
        logger.warning("fp16 requested on the CPU: using bf16 autocast instead")
        precision = "bf16"
    return autocast_dtype(precision)


class EVATrainer(SimpleTrainer):
    """SimpleTrainer with optional autocast (float16 with a grad scaler, or bfloat16) on any device. sharded: the
    model is sharded by FSDP2; its state holds the whole optimizer state by parameter name, and float16 gets the
    scaler that agrees over the processes on overflow. Either layout of the optimizer state resumes either way."""

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype | None = None, device: str = "cpu",
                 rng: RNGState | None = None, sharded: bool = False):
        super().__init__(model, data_loader, optimizer)
        self.rng = rng  # generator states restored from a checkpoint, torch's applied after the next fetch
        self.precision = precision
        self.sharded = sharded
        self.device_type = torch.device(device).type
        use_scaler = precision == torch.float16 and self.device_type == "cuda"
        if sharded:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler as scaler
        else:
            scaler = torch.amp.GradScaler
        self.grad_scaler = scaler(self.device_type) if use_scaler else None

    def run_step(self):
        assert self.model.training, "[EVATrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.rng is not None:
            self.rng.apply_pending()
        with autocast(self.device_type, self.precision):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.sharded:  # every process gathers; rank 0 writes
            ret.update(optimizer=full_optimizer_state(self.model, self.optimizer), optimizer_layout=OPTIMIZER_BY_NAME)
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        by_position = state_dict.get("optimizer_layout") != OPTIMIZER_BY_NAME  # not written by a sharded run
        if by_position and not self.sharded:
            super().load_state_dict(state_dict)
        else:
            TrainerBase.load_state_dict(self, state_dict)
            optimizer = state_dict["optimizer"]
            if by_position:
                optimizer = by_name(optimizer, self.optimizer, self.model)
            load_optimizer_state(self.model, self.optimizer, optimizer)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


class EMAHook(HookBase):
    """Starts the EMA from the weights training begins with (unless a resumed checkpoint restored it) and
    updates it after every optimizer step."""

    def __init__(self, ema: ModelEMA, model):
        self.ema = ema
        self.model = model

    def before_train(self):
        if not self.ema.state:
            self.ema.update(self.model)

    def after_step(self):
        self.ema.update(self.model)


class RunStatsHook(HookBase):
    """Puts throughput (images per second over all processes, the whole step with its data loading; detectron2's
    "time" skips the first iterations) and peak memory (eva02.common.memory.peak_memory_mib) into the event storage
    after every step."""

    def __init__(self, total_batch_size: int, device: str):
        self.total_batch_size = total_batch_size
        self.device = device

    def before_step(self):
        self._start = time.perf_counter()

    def after_step(self):
        seconds = time.perf_counter() - self._start
        self.trainer.storage.put_scalars(images_per_second=self.total_batch_size / max(seconds, 1e-9),
                                         memory_mib=peak_memory_mib(self.device), smoothing_hint=False)


def build_model(cfg, device: str):
    model = instantiate(cfg.model)
    model.to(device)
    return model


def instantiate_with(node, **built):
    """instantiate(node), with some of its arguments given as objects built already (the others are instantiated
    where they stand, so the config's relative interpolations still resolve)."""
    target = locate(node._target_) if isinstance(node._target_, str) else node._target_
    return target(**{key: instantiate(node[key]) for key in node if key != "_target_" and key not in built}, **built)


def setup_datasets(cfg) -> None:
    """Register the standard datasets and run the config's `dataloader.setup` (e.g. generating the demo data),
    on the main process first so workers never write the same files."""
    register_all()
    if "setup" not in cfg.dataloader:
        return
    if comm.is_main_process():
        instantiate(cfg.dataloader.setup)
    comm.synchronize()
    if not comm.is_main_process():
        instantiate(cfg.dataloader.setup)


def do_test(cfg, model, weights: str = "") -> dict:
    """Evaluate `model` on cfg.dataloader.test with cfg.dataloader.evaluator; prints and returns the results.
    An image that cannot be read is skipped, logged and left out of the metric (eva02.det.unreadable); the results
    hold their count ("unreadable_images") and results.json also their files and errors ("unreadable_files").
    weights: a name for the weights evaluated ("raw" / "EMA" during EMA training), used in the log and in the
    results file name (results.json, results_raw.json)."""
    tta = cfg.dataloader.get("tta", {})
    if tta.get("enabled", False):
        mapper = instantiate_with(cfg.dataloader.test.mapper, augmentations=[])  # TTA resizes the originals itself
        model = build_tta(unwrap_model(model), tta)
        logger.info(f"test-time augmentation: sizes {list(tta.sizes)}{', each also flipped' if tta.flip else ''}, "
                    f"merged by {tta.nms_method} at IoU {tta.nms_thresh}")
    else:
        mapper = instantiate(cfg.dataloader.test.mapper)
    # a bad image is skipped and counted, not fatal
    loader = instantiate_with(cfg.dataloader.test, mapper=SkipUnreadable(mapper))
    model = ReadableOnly(model)
    metric = instantiate(cfg.dataloader.evaluator)
    evaluator = metric
    if cfg.train.get("results_dir", ""):
        evaluator = DatasetEvaluators([metric, ServerResultsWriter(_dataset_name(cfg), cfg.train.results_dir)])
    start = time.perf_counter()
    results = inference_on_dataset(model, loader, evaluator)
    results["seconds_per_image"] = (time.perf_counter() - start) / max(len(loader), 1)
    if comm.is_main_process():
        if weights:
            logger.info(f"evaluation results of the {weights} weights:")
        print_csv_format(results)
        logger.info(f"{results['seconds_per_image']:.3f} s per image{' with TTA' if tta.get('enabled') else ''} "
                    "(inference and evaluation)")
        unreadable = getattr(metric, "unreadable", [])
        for entry in unreadable:
            logger.warning(f"left out of the evaluation, unreadable: {entry['file_name']} ({entry['error']})")
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        name = "results.json" if weights in ("", "EMA") else f"results_{weights}.json"
        atomic_write(os.path.join(cfg.train.output_dir, name), lambda tmp: Path(tmp).write_text(
            json.dumps({**results, "unreadable_files": unreadable}, indent=1)))
        _draw(cfg, model, loader, headline=weights in ("", "EMA"))
    return results


def _draw(cfg, model, loader, headline: bool) -> None:
    """The predictions of the first test images, drawn: train.save_predictions of them into OUTPUT/predictions,
    and during training (of the headline weights) train.log_images of them into the run's TensorBoard events."""
    try:
        storage = get_event_storage() if headline else None
    except AssertionError:  # no training run: evaluation only
        storage = None
    save, log = cfg.train.get("save_predictions", 0), cfg.train.get("log_images", 4) if storage else 0
    if not max(save, log):
        return
    drawn = draw_predictions(model, loader, max(save, log), MetadataCatalog.get(_dataset_name(cfg)))
    out_dir = os.path.join(cfg.train.output_dir, "predictions")
    if save:
        os.makedirs(out_dir, exist_ok=True)
        for name, image in drawn[:save]:
            cv2.imwrite(os.path.join(out_dir, name + ".png"), image[:, :, ::-1])
        logger.info(f"drew predictions of {len(drawn[:save])} images into {out_dir}")
    for name, image in drawn[:log]:
        storage.put_image(f"predictions/{name}", torch.from_numpy(image.copy()).permute(2, 0, 1))


def _dataset_name(cfg) -> str:
    names = cfg.dataloader.test.dataset.names
    return names if isinstance(names, str) else names[0]


def _dataset_classes(names) -> list[str] | None:
    """The class names of a training set (its first dataset's), None if its metadata has none."""
    return MetadataCatalog.get(names if isinstance(names, str) else names[0]).get("thing_classes")


class ServerResultsWriter(DatasetEvaluator):
    """Collects predictions as COCO json dicts (RLE masks, contiguous class ids) and writes the evaluation
    server's results json + zip (`eva02.det.evaluation.write_coco_results`, original category ids) on the main
    process; used for COCO test-dev, whose labels are not public."""

    def __init__(self, dataset_name: str, output_dir: str):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.predictions: list[dict] = []

    def reset(self):
        self.predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "unreadable" in out:
                continue
            instances = out["instances"].to("cpu")
            self.predictions.append({"image_id": inp["image_id"],
                                     "instances": instances_to_coco_json(instances, inp["image_id"])})

    def evaluate(self):
        from .evaluation import write_coco_results

        parts = comm.gather(self.predictions, dst=0)
        if comm.is_main_process():
            json_path, zip_path = write_coco_results([p for part in parts for p in part], self.dataset_name,
                                                     self.output_dir)
            logger.info(f"evaluation-server results: {json_path} and {zip_path}")
        return {}


@torch.no_grad()
def draw_predictions(model, loader, count: int, metadata,
                     score_thresh: float = 0.5) -> list[tuple[str, np.ndarray]]:
    """The predictions (score >= score_thresh) of the first `count` readable images of `loader`, drawn by
    detectron2's Visualizer: [(image name without extension, RGB uint8 array)]."""
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    was_training = model.training
    model.eval()
    drawn = []
    for inputs in loader:
        outputs = model(inputs)
        for inp, out in zip(inputs, outputs):
            if len(drawn) >= count:
                break
            if "unreadable" in out:
                continue
            image = read_image(inp["file_name"], format="RGB")
            instances = out["instances"].to("cpu")
            instances = instances[instances.scores >= score_thresh]
            scale = max(1.0, 512 / max(image.shape[:2]))  # small demo images: enlarge so labels stay readable
            picture = Visualizer(image, metadata, scale=scale).draw_instance_predictions(instances).get_image()
            drawn.append((os.path.splitext(os.path.basename(inp["file_name"]))[0], picture))
        if len(drawn) >= count:
            break
    model.train(was_training)
    return drawn


def _eval_weights_use_ema(cfg) -> bool:
    ema = cfg.train.get("model_ema", {})
    return bool(ema.get("enabled", False) and ema.get("use_for_eval", True))


def _require(cfg, default: str) -> str:
    """Which weights a load must set (EVACheckpointer's `require`): the default, or "any" with
    train.init_allow_partial (tools/train_det.py --allow-partial)."""
    return "any" if cfg.train.get("init_allow_partial", False) else default


def _ddp(model, cfg, device: str):
    """DistributedDataParallel when world size > 1; on the CPU without device_ids (gloo), and without the
    fp16 gradient compression of the official configs (a saving of GPU all-reduce bandwidth)."""
    ddp = dict(cfg.train.ddp)
    if device == "cpu":
        if ddp.pop("fp16_compression", False) and comm.get_world_size() > 1:
            logger.info("DDP on the CPU: fp16 gradient compression (train.ddp.fp16_compression) is GPU only; off")
        ddp["device_ids"] = None
    return create_ddp_model(model, **ddp)


def parallel_mode(cfg) -> str:
    """cfg.train.parallel (PARALLEL; "ddp" for configs without it), checked."""
    parallel = cfg.train.get("parallel", "ddp")
    if parallel not in PARALLEL:
        raise ValueError(f"train.parallel={parallel!r}: use one of {', '.join(PARALLEL)}")
    return parallel


def do_train(cfg, model, device: str, resume: bool = False, extra_hooks=()) -> dict:
    """Train per cfg (resume continues at the iteration after the last saved checkpoint); extra_hooks run
    after the standard ones. Returns the latest logged metrics."""
    train = cfg.dataloader.train
    sharded = parallel_mode(cfg) == "fsdp" and comm.get_world_size() > 1
    rng = RNGState()
    ema = ModelEMA(cfg.train.model_ema.decay) if cfg.train.model_ema.enabled else None
    checkpointer = EVACheckpointer(model, cfg.train.output_dir, require=_require(cfg, "backbone"),
                                   weights_only=cfg.train.get("init_weights_only", True),
                                   classes=_dataset_classes(train.dataset.names),
                                   **({"ema_state": ema} if ema is not None else {}))
    if comm.is_main_process():
        remove_stale_temporaries(cfg.train.output_dir)
    # The weights load into the whole model, before it is wrapped or sharded; the trainer's state (iteration,
    # optimizer, hooks) and the generators once the trainer and its data exist (building the sampler draws).
    resuming = resume and checkpointer.has_checkpoint()
    # only initial weights may come from a file's EMA; a resumed checkpoint restores model and EMA as saved
    checkpointer.use_ema = bool(cfg.train.get("init_use_ema", False)) and not resuming
    rest = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    checkpointer.use_ema = False
    if sharded:
        parallel_model = shard(model, model.backbone.net.blocks, torch.device(device))
    else:
        parallel_model = _ddp(model, cfg, device)
    cfg.optimizer.params.model = model  # after sharding: the optimizer holds the sharded parameters
    optimizer = instantiate(cfg.optimizer)
    dataset = check_training_dataset(instantiate(train.dataset), str(train.dataset.get("names", "")))
    sampler = ResumableSampler(instantiate(train.sampler) if train.get("sampler") is not None
                               else TrainingSampler(len(dataset)))
    train_loader = instantiate_with(train, dataset=dataset, sampler=sampler,
                                    mapper=SkipUnreadable(instantiate(train.mapper), drop=True))
    trainer = EVATrainer(parallel_model, train_loader, optimizer, precision=training_dtype(cfg, device),
                         device=device, rng=rng, sharded=sharded)
    checkpointer.add_checkpointable("trainer", trainer)
    checkpointer.add_checkpointable("rng_state", rng)

    @rng_preserved()  # training continues as if no evaluation had run (and as a resumed run, which did not)
    def evaluate():
        # a sharded model is evaluated whole: each process runs its own number of images
        if ema is None:
            with unsharded(model):
                return do_test(cfg, model)
        # As the official loop: the raw weights, then the EMA weights; the EMA numbers are the headline ones
        # and the raw ones are logged beside them under "raw/".
        with unsharded(model):
            raw = do_test(cfg, model, weights="raw")
        with ema.applied_to(model), unsharded(model):
            return {**do_test(cfg, model, weights="EMA"), "raw": raw}

    # every process takes part in gathering a checkpoint (EVACheckpointer.save); only rank 0 writes and prunes
    checkpoint_settings = dict(cfg.train.checkpointer, **({} if comm.is_main_process() else {"max_to_keep": None}))
    trainer.register_hooks([
        hooks.IterationTimer(),
        RunStatsHook(train.total_batch_size, device),
        EMAHook(ema, model) if ema is not None else None,
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **checkpoint_settings),
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter(
            [CommonMetricPrinter(cfg.train.max_iter),
             # each line: the median of the iterations since the previous line (detectron2's default window
             # of 20 would carry iterations before a resume into the lines after it)
             JSONWriter(os.path.join(cfg.train.output_dir, "metrics.json"), window_size=cfg.train.log_period),
             # every loss term, lr, speed, memory, the metrics of each evaluation and the drawn panels
             TensorboardXWriter(cfg.train.output_dir, window_size=cfg.train.log_period)],
            period=cfg.train.log_period,
        ) if comm.is_main_process() else None,
        *extra_hooks,
    ])
    start_iter = 0
    if resuming:
        for key in ("trainer", "rng_state"):  # after the hooks: their state (lr schedule) is in the trainer's
            if key in rest:
                checkpointer.checkpointables[key].load_state_dict(rest.pop(key))
        start_iter = trainer.iter + 1
        # the data stream continues after the images already trained on (the generators came with the checkpoint)
        sampler.skip = start_iter * (train.total_batch_size // comm.get_world_size())
        logger.info(f"resuming from iteration {start_iter}")
    trainer.train(start_iter, cfg.train.max_iter)
    if not comm.is_main_process():
        return {}
    curves = draw_curves(cfg.train.output_dir)
    if curves:
        logger.info(f"training curves: {curves} (TensorBoard: {tensorboard_command(cfg.train.output_dir)})")
    return trainer.storage.latest()


def run(cfg, eval_only: bool = False, resume: bool = False, extra_hooks=()):
    """Entry point of tools/train_det.py (after detectron2's default_setup). Returns the evaluation results
    (eval_only) or the latest training metrics."""
    device = resolve_device(cfg)
    cfg.train.device = device
    if comm.is_main_process():
        os.makedirs(cfg.train.output_dir, exist_ok=True)
    setup_datasets(cfg)
    model = build_model(cfg, device)
    logger.info(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    if eval_only:
        use_ema = bool(cfg.train.get("init_use_ema", False)) or _eval_weights_use_ema(cfg)
        checkpointer = EVACheckpointer(model, cfg.train.output_dir, use_ema=use_ema, require=_require(cfg, "all"),
                                       weights_only=cfg.train.get("init_weights_only", True))
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
        return do_test(cfg, _ddp(model, cfg, device))
    return do_train(cfg, model, device, resume=resume, extra_hooks=extra_hooks)
