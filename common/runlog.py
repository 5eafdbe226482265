"""What a training run shows besides its text log. Every trainer (detection, segmentation, MIM) writes TensorBoard
events into its run folder through its framework's writer; here they are read back with tensorboard's own reader
and drawn as one `curves.png` (losses, learning rate, metrics, throughput, memory) for people who do not open
TensorBoard (`draw_curves`), and mirrored to Weights & Biases when a tool is given --wandb (`start_wandb`).

A resumed run redoes the steps after its last checkpoint and writes them again into a newer event file: the value
read last (files in time order) is the one kept for a step, so the curves show the run that the checkpoints hold.
"""
from __future__ import annotations

import glob
import os
import sys

from .cli import UsageError
from .files import atomic_write

__all__ = ["event_files", "read_scalars", "read_image_tags", "draw_curves", "start_wandb", "tensorboard_command",
           "METRIC_NAMES"]

METRIC_NAMES = ("AP", "AP50", "AP75", "mIoU", "mAcc", "aAcc")  # the last part of a metric's tag


def tensorboard_command(logdir: str) -> str:
    """The command that shows logdir in TensorBoard, with this interpreter (a .venv has no `tensorboard` script)."""
    return f"{sys.executable} -m tensorboard.main --logdir {logdir}"


def event_files(run_dir: str) -> list[str]:
    """The TensorBoard event files under run_dir (any depth), oldest first."""
    files = glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True)
    return sorted(files, key=lambda f: (os.path.getmtime(f), f))


def _accumulators(run_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for path in event_files(run_dir):
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        yield acc


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] sorted by step, from every event file of the run (a step written again by a
    resumed run keeps its last value)."""
    by_tag: dict[str, dict[int, float]] = {}
    for acc in _accumulators(run_dir):
        for tag in acc.Tags()["scalars"]:
            values = by_tag.setdefault(tag, {})
            for event in acc.Scalars(tag):
                values[event.step] = event.value
    return {tag: sorted(values.items()) for tag, values in sorted(by_tag.items())}


def read_image_tags(run_dir: str) -> dict[str, list[int]]:
    """tag -> steps at which an image was written, from every event file of the run."""
    tags: dict[str, set[int]] = {}
    for acc in _accumulators(run_dir):
        for tag in acc.Tags()["images"]:
            tags.setdefault(tag, set()).update(event.step for event in acc.Images(tag))
    return {tag: sorted(steps) for tag, steps in sorted(tags.items())}


def _panels(scalars: dict) -> list[tuple[str, list[str], bool]]:
    """(title, tags, log scale) of each panel drawn; a panel without tags is left out."""
    losses = [t for t in scalars if "loss" in t.split("/")[-1] and "scale" not in t]
    lrs = [t for t in scalars if t.split("/")[-1] in ("lr", "base_lr")]
    metrics = [t for t in scalars if t.split("/")[-1] in METRIC_NAMES]
    speed = [t for t in scalars if t.split("/")[-1] == "images_per_second"]
    memory = [t for t in scalars if t.split("/")[-1] == "memory_mib"]
    panels = [("losses", losses, True), ("learning rate", lrs, False), ("metrics", metrics, False),
              ("images per second", speed, False), ("peak memory (MiB)", memory, False)]
    return [panel for panel in panels if panel[1]]


def draw_curves(run_dir: str, path: str | None = None, title: str | None = None) -> str | None:
    """Draw the run's scalars (read_scalars) into path (default RUN_DIR/curves.png): one panel each for the
    losses (log scale), the learning rate, the metrics of each evaluation, throughput and peak memory. Returns the path,
    or None when the run has no events yet."""
    scalars = read_scalars(run_dir)
    panels = _panels(scalars)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = path or os.path.join(run_dir, "curves.png")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (name, tags, log) in zip(axes[0], panels):
        for tag in tags:
            steps, values = zip(*scalars[tag])
            marker = "o" if len(steps) < 30 else None
            ax.plot(steps, values, lw=1.2 if tag.endswith(("total_loss", "/loss")) or tag == "loss" else 0.8,
                    marker=marker, ms=3, label=tag)
        if log and all(v > 0 for tag in tags for _, v in scalars[tag]):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=1 + len(tags) // 8)
    fig.suptitle(title or os.path.basename(os.path.normpath(run_dir)), fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def start_wandb(project: str | None, run_dir: str, config: dict | None = None) -> None:
    """With a project name (a tool's --wandb PROJECT): a Weights & Biases run that mirrors every TensorBoard event
    file the process writes from now on (wandb's sync_tensorboard), so scalars and images reach W&B through the
    frameworks' own TensorBoard writers. Call it before the trainer makes its writer; None does nothing. wandb is
    not installed with eva02: UsageError says how. WANDB_MODE=offline keeps the run on disk (wandb sync later)."""
    if not project:
        return
    try:
        import wandb
    except ImportError:
        raise UsageError("--wandb needs the wandb package: pip install wandb (then wandb login, or "
                         "WANDB_MODE=offline to keep the run on disk)") from None
    wandb.init(project=project, dir=run_dir, name=os.path.basename(os.path.normpath(run_dir)), config=config,
               sync_tensorboard=True)
