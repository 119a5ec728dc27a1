"""The plot of a federated run's history: global accuracy vs round, with the cumulative traffic."""
from pathlib import Path
from typing import Dict, List, Sequence, Union


def plot_accuracy(rows: Sequence[Dict], path: Union[str, Path], title: str = '') -> Path:
    """PNG of top-1 (and top-5) global accuracy against the round, with cumulative traffic on a second axis."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rounds: List[int] = [r['round'] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(rounds, [r['top1'] for r in rows], 'o-', label='top-1')
    ax.plot(rounds, [r['top5'] for r in rows], 's--', alpha=0.6, label='top-5')
    ax.set_xlabel('round')
    ax.set_ylabel('global accuracy (%)')
    ax.set_xticks(rounds)
    ax.grid(alpha=0.3)
    traffic = ax.twinx()
    traffic.plot(rounds, [r['cum_bytes'] / 2 ** 20 for r in rows], color='gray', alpha=0.5, label='traffic')
    traffic.set_ylabel('cumulative traffic (MiB)')
    lines = ax.get_legend_handles_labels()[0] + traffic.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc='lower right')
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
