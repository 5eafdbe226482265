"""What tools/train_seg.py and tools/test_seg.py share: the config as the command line sets it (overrides, work
dir, AMP, launcher from torchrun, DDP on the CPU or FSDP2 sharding). Conventions: eva02.common.cli."""
from __future__ import annotations

import logging
import os
import os.path as osp

import torch
import torch.distributed as dist
import mmseg.registry
from mmengine.config import Config, DictAction
from mmengine.registry import Registry
from mmengine.runner import Runner

from eva02.common.cli import UsageError, check_override_keys, takes_argument, world_size
from eva02.common.precision import torch_name

from .optim import config_precision, fp32_without_gpu
from .own_data import use_own_data
from .own_formats import seg_data_root
from .sharding import PARALLEL, GatheringRunner, ShardingHook

__all__ = ["read_config", "load_config", "work_dir_of", "apply_precision", "init_cpu_process_group", "check_overrides",
           "build_runner"]

_REGISTRIES = [r for r in vars(mmseg.registry).values() if isinstance(r, Registry)]


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE strings -> dict, with mmengine's --cfg-options value syntax (lists, tuples, numbers)."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key] = DictAction._parse_iterable(value)
    return overrides


# mmseg's segmentor test_cfg is a plain dict (no `type`): slide inference reads these keys from it.
_TEST_CFG_KEYS = ("mode", "crop_size", "stride")


def _registered_argument(node, name: str) -> bool:
    """A key a `type=...` dict does not list yet, but the registered class (or function) it builds takes; or a
    slide-inference key of a segmentor's test_cfg (a dict with a `mode`)."""
    if "mode" in node and "type" not in node and name in _TEST_CFG_KEYS:
        return True
    kind = node.get("type")
    if isinstance(kind, str):
        kind = next((found for registry in _REGISTRIES if (found := registry.get(kind)) is not None), None)
    return callable(kind) and takes_argument(kind, name)


def check_overrides(cfg: Config, overrides: dict) -> None:
    """Every override key names an entry of the config, a top-level argument of mmengine's Runner (work_dir,
    load_from, randomness, ...) or an argument of the registered class a `type` dict builds; otherwise UsageError
    with the closest existing key (mmengine would add the typo as a new key that nothing reads)."""
    root = cfg._cfg_dict
    check_override_keys(root, list(overrides), lambda node, name: takes_argument(Runner, name) if node is root
                        else _registered_argument(node, name))


def work_dir_of(cfg: Config, config_file: str, output: str | None) -> str:
    """A run's work dir: --output, else the config's work_dir, else work_dirs/CONFIG_NAME."""
    return output or cfg.get("work_dir") or osp.join("work_dirs", osp.splitext(osp.basename(config_file))[0])


def read_config(config_file: str, overrides: list[str], data: str | None = None, output: str | None = None,
                train: tuple[str, str] | None = None, val: tuple[str, str] | None = None,
                fmt: str | None = None) -> Config:
    """The config on own data if given (eva02.seg.own_data.use_own_data): `data`, a folder in the custom layout or
    a Pascal VOC segmentation folder, or `train` / `val` (ANNOTATIONS, IMAGES) instance annotations of any format
    (format `fmt`, None: detected); those two are converted into WORK_DIR/own_data (eva02.seg.own_formats). The
    checked overrides are merged after (they may set the own-data datasets); UsageError for a missing file or
    folder."""
    if not osp.isfile(config_file):
        raise UsageError(f"--config-file {config_file}: no such file")
    cfg = Config.fromfile(config_file)
    if data is not None and not osp.isdir(data):
        raise UsageError(f"--data {data}: no such folder")
    if data is not None and (train or val):
        raise UsageError("--data or --train-data / --val-data, not both")
    data = seg_data_root(data, work_dir_of(cfg, config_file, output), train, val, fmt)
    if data is not None:
        classes = use_own_data(cfg, data)
        print(f"own data {data}: {len(classes)} classes ({', '.join(classes)})")
    overrides = parse_overrides(overrides)
    check_overrides(cfg, overrides)
    cfg.merge_from_dict(overrides)
    return cfg


def load_config(config_file: str, output: str | None, overrides: list[str], data: str | None = None,
                train: tuple[str, str] | None = None, val: tuple[str, str] | None = None,
                fmt: str | None = None) -> Config:
    """read_config, for a run: work_dir = work_dir_of (output, default work_dirs/CONFIG_NAME), and the launcher
    "pytorch" under torchrun; on a CPU-only machine DDP uses gloo and CPUDistributedDataParallel; the config's
    `parallel = "fsdp"` shards the model instead (eva02.seg.sharding)."""
    cfg = read_config(config_file, overrides, data, output, train, val, fmt)
    cfg.work_dir = work_dir_of(cfg, config_file, output)
    cfg.launcher = "pytorch" if world_size() > 1 else "none"
    os.environ.setdefault("LOCAL_RANK", "0")
    parallel = cfg.get("parallel", "ddp")
    if parallel not in PARALLEL:
        raise UsageError(f"parallel={parallel!r}: use one of {', '.join(PARALLEL)}")
    if cfg.launcher == "pytorch" and not torch.cuda.is_available():
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"  # nccl needs GPUs
        cfg.model_wrapper_cfg = dict(type="CPUDistributedDataParallel", broadcast_buffers=False,
                                     find_unused_parameters=cfg.get("find_unused_parameters", False))
    if cfg.launcher == "pytorch" and parallel == "fsdp":
        cfg.model_wrapper_cfg = dict(type="ShardedSegmentor")  # sharded by ShardingHook (eva02.seg.sharding)
    return cfg


def apply_precision(cfg: Config, precision: str | None) -> str:
    """--precision fp32|fp16|bf16 on the config's optim_wrapper (None: as the config says); fp16 / bf16 autocast
    needs a GPU (mmengine's AmpOptimWrapper), so a CPU-only machine trains the configs' AMP in fp32. Returns
    the precision that runs."""
    wrapper = cfg.optim_wrapper
    if precision in ("fp16", "bf16"):
        if not torch.cuda.is_available():
            raise UsageError(f"--precision {precision} needs a GPU (mmengine's AmpOptimWrapper runs on CUDA/NPU/MLU "
                             "only)")
        wrapper.update(type="AmpOptimWrapper", dtype=torch_name(precision))
        wrapper.loss_scale = "dynamic" if precision == "fp16" else None
        return precision
    if precision == "fp32" or fp32_without_gpu(cfg):
        wrapper.type = "OptimWrapper"
        for key in ("dtype", "loss_scale"):
            wrapper.pop(key, None)
        return "fp32" if precision == "fp32" else "fp32 (no GPU: the config's fp16 AMP is off)"
    return config_precision(cfg)


class _KnownMMEngineNotices(logging.Filter):
    """mmengine's own notices, logged as WARNING records on every segmentation run and about nothing the user set
    (its deprecated file client inside mmseg's image loading, an evaluator metric without a prefix)."""
    NOTICES = ('"FileClient" will be deprecated', '"HardDiskBackend" is the alias of "LocalBackend"',
               "The prefix is not set in metric class")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(notice in record.getMessage() for notice in self.NOTICES)


def build_runner(cfg: Config, debug: bool = False) -> Runner:
    """mmengine's Runner for the config (GatheringRunner for a sharded one), with ShardingHook; its log leaves out
    mmengine's known notices unless --debug (the warnings half of eva02.common.cli.quiet_third_party_warnings, for
    records of the runner's own logger)."""
    runner = (GatheringRunner if cfg.get("parallel") == "fsdp" else Runner).from_cfg(cfg)
    if not debug:
        runner.logger.addFilter(_KnownMMEngineNotices())
    # shards a "fsdp" run; in every run, resumes a sharded run's checkpoint (optimizer state by parameter name)
    runner.register_hook(ShardingHook())
    return runner


def init_cpu_process_group() -> None:
    """Under torchrun on a CPU-only machine: join the gloo process group (mmengine's own init would call
    torch.cuda.set_device)."""
    if world_size() > 1 and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
