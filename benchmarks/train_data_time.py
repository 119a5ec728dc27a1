"""Share of the training iteration spent waiting for data, from a run's MMEngine log (``vis_data/scalars.json``).

Run training with ``default_hooks.logger.interval=1 log_processor.window_size=1`` so every iteration is logged
unsmoothed, then::

    python benchmarks/train_data_time.py WORK_DIR [--skip 8]

Prints one JSON line: mean ``data_time`` and ``time`` (seconds per iteration) and their ratio over the iterations
after the first ``--skip`` (the first epoch's worker start-up), and the same over all iterations.
"""
import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir')
    parser.add_argument('--skip', type=int, default=8, help='first iterations left out of the steady-state mean')
    args = parser.parse_args()
    logs = sorted(Path(args.work_dir).glob('*/vis_data/scalars.json'))
    if not logs:
        raise SystemExit(f'no */vis_data/scalars.json under {args.work_dir}: did the training run?')
    rows = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
    rows = [row for row in rows if 'data_time' in row and 'time' in row]
    if len(rows) <= args.skip:
        raise SystemExit(f'{logs[-1]}: {len(rows)} logged iterations, need more than --skip {args.skip}')

    def mean(key: str, part: list) -> float:
        return sum(row[key] for row in part) / len(part)

    steady = rows[args.skip:]
    print(json.dumps(dict(
        run=Path(args.work_dir).name, iterations=len(rows), steady_iterations=len(steady),
        data_time=round(mean('data_time', steady), 4), time=round(mean('time', steady), 4),
        data_share=round(mean('data_time', steady) / mean('time', steady), 3),
        all_data_share=round(mean('data_time', rows) / mean('time', rows), 3))))


if __name__ == '__main__':
    main()
