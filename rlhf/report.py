"""Training curves of one run, or of every child of a sweep's parent run, as one PNG.

  python -m rlhf.report --run <run id> --out report.png
  python -m rlhf.report --parent <parent run id> --out sweep.png     # one line per sweep point
  python -m rlhf.report --parent <id> --tracking-uri sqlite:///$PWD/mlruns/mlflow.db --out sweep.png

Four panels: reward, KL to the reference, loss, and seconds per step. Each panel plots the first metric of its
list that the run logged (on-policy runs log rollout/*, preference runs train/*), so one layout serves every
algorithm; a panel with nothing to show says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

# (panel title, candidate metrics in order of preference)
PANELS = (
    ("reward", ("rollout/reward_mean", "train/reward_margin", "train/chosen_reward", "train/accuracy")),
    ("KL", ("rollout/kl", "train/kl_ref", "train/kl_loss")),
    ("loss", ("train/loss", "train/policy_loss")),
    ("step time (s)", ("timing/step_s",)),
)


def _history(client, run_id: str, metric: str) -> tuple[list[int], list[float]]:
    points = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
    return [m.step for m in points], [m.value for m in points]


def pick_metric(available: set[str], candidates: tuple[str, ...]) -> Optional[str]:
    return next((m for m in candidates if m in available), None)


def run_labels(runs: list) -> dict[str, str]:
    """Legend labels: the params that differ between the runs (`algo.lr=3e-05`), else the run names."""
    keys = sorted(set().union(*(r.data.params for r in runs))) if runs else []
    differ = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1 and not k.startswith("derived.")]
    labels = {}
    for r in runs:
        parts = [f"{k}={r.data.params.get(k)}" for k in differ[:3]]
        labels[r.info.run_id] = " ".join(parts) or r.info.run_name or r.info.run_id[:8]
    return labels


def render(client, runs: list, out: Path, title: str):
    """Draw the panels for `runs` into `out` (PNG); returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on cluster nodes
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = run_labels(runs)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (name, candidates) in zip(axes.flat, PANELS):
        drawn = []
        for r in runs:
            metric = pick_metric(set(r.data.metrics), candidates)
            if metric is None:
                continue
            steps, values = _history(client, r.info.run_id, metric)
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=labels[r.info.run_id])
            drawn.append(metric)
        ax.set_title(f"{name} ({', '.join(sorted(set(drawn)))})" if drawn else name)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif len(runs) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig


def report(out: str, run_id: Optional[str] = None, parent_id: Optional[str] = None, tracking_uri: Optional[str] = None):
    """Render the report of a run (`run_id`) or of a sweep's children (`parent_id`) into `out`."""
    from mlflow.tracking import MlflowClient

    from rlhf.tracking.callbacks import child_runs
    from rlhf.tracking.mlflow_tracker import default_tracking_uri

    if (run_id is None) == (parent_id is None):
        raise ValueError("give exactly one of --run and --parent")
    client = MlflowClient(tracking_uri or default_tracking_uri())
    if run_id:
        runs = [client.get_run(run_id)]
        title = f"run {runs[0].info.run_name} ({run_id[:8]})"
    else:
        parent = client.get_run(parent_id)
        runs = sorted(child_runs(client, parent.info.experiment_id, parent_id), key=lambda r: r.info.start_time)
        if not runs:
            raise ValueError(f"run {parent_id} has no child runs: is it a sweep's parent run (tag rlhf.sweep)?")
        title = f"sweep {parent.info.run_name}: {len(runs)} runs"
    return render(client, runs, Path(out), title)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.report", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="MLflow run id")
    which.add_argument("--parent", help="MLflow parent run id of a sweep")
    parser.add_argument("--out", default="report.png", help="PNG to write")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlruns)")
    args = parser.parse_args(argv)
    try:
        report(args.out, run_id=args.run, parent_id=args.parent, tracking_uri=args.tracking_uri)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
