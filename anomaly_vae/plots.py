"""Pictures for people who would rather look than read: a threshold preview as a PNG.

Top: the distribution of the stored scores, with the current and the proposed thresholds.
Bottom: the score over time, the thresholds, and the alerts the proposal would open (and the
records that would resolve them). Drawn with matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from anomaly_vae.storage.tuning import ThresholdPreview

CURRENT, PROPOSED = "#1f5fbf", "#d62728"


def plot_path(path: Path | str) -> Path:
    """The file a picture asked for as ``path`` is written to, checked before any work: a
    picture format matplotlib writes (no suffix: ``.png``), not a folder, not under a file.
    A folder that does not exist is created when the picture is written, as ``score --out``
    creates its folder (``jobs.batch.check_writable``'s rules)."""
    from matplotlib.backend_bases import FigureCanvasBase

    from anomaly_vae.errors import ConfigError, InputFileError

    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"--plot {path} is a folder: give a file, e.g. {path / 'preview.png'}")
    if not path.suffix:
        path = path.with_suffix(".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise ConfigError(
            f"--plot {path}: {path.suffix!r} is not a picture format; use .png, or one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputFileError(f"--plot {path}: {parent} is a file, not a folder")
            break
    return path


def preview_plot(preview: ThresholdPreview, path: Path | str) -> Path:
    """Write the preview's picture to ``path`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from anomaly_vae.errors import InputFileError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(
            f"--plot {path}: cannot create folder {path.parent}: {exc.strerror}"
        ) from None
    frame = preview.scores
    scores = frame["score"].to_numpy(dtype=np.float64)
    levels = _levels(preview)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 8), gridspec_kw={"height_ratios": [1, 1.3]}, constrained_layout=True
    )
    summary = preview.as_dict()
    title = (
        f"{preview.model_name} (model version {preview.model_version}): {summary['records']:,} "
        f"stored scores"
        + (f" since {preview.since:%Y-%m-%d %H:%M}" if preview.since else "")
        + f"\nproposed: {summary['flagged']:,} flagged, {summary['alerts']:,} alerts "
        f"(rule {preview.rule.describe()}); "
        f"at the time: {summary['at_the_time']['flagged']:,} flagged, "
        f"{summary['at_the_time']['alerts']:,} alerts"
    )
    fig.suptitle(title, fontsize=10)
    if len(scores) == 0:
        top.text(0.5, 0.5, "no stored scores in this period", ha="center", va="center")
        bottom.set_axis_off()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    # Focus on where the thresholds are: a long tail would squeeze them into one pixel.
    # Higher scores are drawn at the top edge and counted.
    highest_level = max(value for _, value, _, _ in levels)
    low = float(np.quantile(scores, 0.001))
    median = float(np.median(scores))
    upper = highest_level + max(highest_level - median, 1e-9)
    span = upper - low or 1.0
    clipped = np.clip(scores, low - 0.01 * span, upper)
    top.hist(clipped, bins=120, color="#9a9a9a", log=True)
    above = int(np.sum(scores > upper))
    if above:
        top.annotate(
            f"{above:,} higher scores in the last bin (and at the top edge below)",
            xy=(1, 1),
            xycoords="axes fraction",
            xytext=(-4, -12),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
    for label, value, color, style in levels:
        top.axvline(
            value, color=color, linestyle=style, linewidth=1.6, label=f"{label} {value:.4g}"
        )
    top.set_xlabel("score (higher = more anomalous)")
    top.set_ylabel("records (log scale)")
    top.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1, 0.9))
    top.set_title("score distribution", fontsize=9, loc="left")

    times = frame["time"].dt.tz_convert(None).to_numpy()
    shown = np.clip(scores, low - 0.01 * span, upper)
    bottom.scatter(times, shown, s=3, color="#7a7a7a", alpha=0.5, linewidths=0, label="score")
    for _label, value, color, style in levels:
        bottom.axhline(value, color=color, linestyle=style, linewidth=1.2)
    opened = [e.index for e in preview.result.events if e.kind == "open"]
    resolved = [e.index for e in preview.result.events if e.kind == "resolve"]
    if opened:
        bottom.scatter(
            times[opened],
            shown[opened],
            marker="v",
            s=46,
            color=PROPOSED,
            edgecolors="black",
            linewidths=0.4,
            zorder=3,
            label=f"alert opened ({len(opened):,})",
        )
    if resolved:
        bottom.scatter(
            times[resolved],
            shown[resolved],
            marker="^",
            s=30,
            color="#2ca02c",
            edgecolors="black",
            linewidths=0.4,
            zorder=3,
            label=f"resolved ({len(resolved):,})",
        )
    bottom.set_ylim(low - 0.02 * span, upper + 0.02 * span)
    bottom.set_ylabel("score (clipped at the top)")
    bottom.set_title("score over time, alerts under the proposal", fontsize=9, loc="left")
    bottom.legend(fontsize=8, loc="upper left", markerscale=1.2)
    plt.setp(bottom.get_xticklabels(), rotation=25, ha="right")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _levels(preview: ThresholdPreview) -> list[tuple[str, float, str, Any]]:
    out: list[tuple[str, float, str, Any]] = []
    if preview.current is not None:
        out.append(("current warning", preview.current.warning, CURRENT, "--"))
        if preview.current.critical is not None:
            out.append(("current critical", preview.current.critical, CURRENT, ":"))
    out.append(("proposed warning", preview.proposed.warning, PROPOSED, "-"))
    if preview.proposed.critical is not None:
        out.append(("proposed critical", preview.proposed.critical, PROPOSED, "-."))
    return out
