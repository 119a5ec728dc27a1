"""Frames per second one DataLoader worker delivers on an AdaTAD config's train and test pipelines, per video reader.

Old = the OpenCV reader, new = PyAV (``VideoReader(backend=...)``). For each pipeline and backend it runs the
config's dataset (``__getitem__``: window choice, decoding, resize/crop/flip, packing) on ``--samples`` items in
this one process, as a worker does, and also the reader alone on the same windows (``stage="decode"``). The random
windows are seeded per repeat, so every backend reads the same frames. Reported per configuration: ``wall_fps`` (the
best of ``--repeats``: the machine's speed with the least interference) and ``cpu_fps`` (frames per CPU-second of
this process, all decoder threads included: what a worker costs when every core is busy).

``--stages`` instead times each transform of the pipelines (default reader) on the same seeded items and prints
its ms per window and per frame (CPU time, the best of ``--repeats``; the transforms are built after seeding numpy,
so ImgAug and ColorJitter draw the same operations on every run).

    python tools/data/make_synthetic_thumos.py --out data/thumos_size --num-train 8 --num-val 4 \\
        --min-frames 900 --max-frames 1200 --fps 30 --width 320 --height 180 --min-action 60 --max-action 200
    python benchmarks/video_decode.py --data data/thumos_size

Prints one JSON line per configuration.
"""
import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from unittest import mock

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import opentad_lora.datasets  # noqa: E402,F401  (registers the datasets and transforms)
from opentad_lora.datasets.tad import transforms  # noqa: E402
from opentad_lora.datasets.tad.video_reader import VideoReader  # noqa: E402
from opentad_lora.registry import DATASETS  # noqa: E402

DEFAULT_CONFIG = 'configs/adatad/thumos/e2e_thumos_videomae_s_768x1_160_adapter.py'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True, help='output folder of tools/data/make_synthetic_thumos.py')
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='config whose train/test pipelines are timed')
    parser.add_argument('--backends', default='opencv,pyav', help='comma-separated: opencv (old), pyav (new)')
    parser.add_argument('--decoder-threads', default='0', help='PyAV threads per video, comma-separated (0: auto)')
    parser.add_argument('--samples', type=int, default=4, help='dataset items per repeat')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--stages', action='store_true', help='time each pipeline transform instead')
    return parser.parse_args()


def build_dataset(cfg: Config, split: str, data: Path):
    dataset_cfg = cfg[f'{split}_dataloader'].dataset.copy()
    dataset_cfg.update(ann_file=str(data / 'annotations/thumos_14_anno.json'),
                       class_map=str(data / 'annotations/category_idx.txt'),
                       data_path=str(data / 'raw_data/video'))
    return DATASETS.build(dataset_cfg)


def pick_items(dataset, samples: int, seed: int) -> list:
    """``samples`` dataset indices drawn with ``seed``, and the ``(path, frame indices)`` their pipelines read
    (recorded once with the OpenCV reader; np.random is re-seeded so every run draws the same windows)."""
    indices = [int(i) for i in np.random.default_rng(seed).choice(len(dataset), samples,
                                                                  replace=samples > len(dataset))]
    windows = []
    with mock.patch.object(transforms, 'VideoReader', partial(_RecordingReader, windows)):
        np.random.seed(seed)
        for index in indices:
            dataset[index]
    return indices, windows


def time_run(dataset, backend: str, threads: int, items: tuple, seed: int, stage: str) -> tuple:
    """``(frames, wall seconds, cpu seconds)`` of the reads alone (``stage='decode'``) or the whole items."""
    reader = forcing(VideoReader, backend=backend, decoder_threads=threads)
    indices, windows = items
    np.random.seed(seed)
    frames, wall, cpu = 0, time.perf_counter(), time.process_time()
    if stage == 'decode':
        for path, window in windows:
            frames += len(reader(path).read(window))
    else:
        with mock.patch.object(transforms, 'VideoReader', reader):  # LoadFrames builds its reader by this name
            for index in indices:
                frames += dataset[index]['inputs'].shape[1]
    return frames, time.perf_counter() - wall, time.process_time() - cpu


def time_stages(dataset, indices: list, seed: int) -> dict:
    """``{transform name: CPU seconds}`` over ``indices``, running the pipeline's transforms one by one."""
    np.random.seed(seed)
    seconds = {}
    for index in indices:
        results = dataset.get_data_info(index)
        for step, transform in enumerate(dataset.pipeline.transforms):
            start = time.process_time()
            results = transform(results)
            name = f'{step}:{type(transform).__name__}'
            seconds[name] = seconds.get(name, 0.0) + time.process_time() - start
    return seconds


def report_stages(cfg: Config, data: Path, args: argparse.Namespace) -> None:
    """One JSON line per transform of the train and test pipelines: ms per window and per frame, best of repeats."""
    for split in ('train', 'test'):
        np.random.seed(0)  # the transforms draw their fixed choices (ImgAug's signs, ColorJitter's order) when built
        dataset = build_dataset(cfg, split, data)
        indices = [int(i) for i in np.random.default_rng(0).choice(len(dataset), args.samples,
                                                                    replace=args.samples > len(dataset))]
        frames = args.samples * dataset[indices[0]]['inputs'].shape[1]
        runs = [time_stages(dataset, indices, seed=0) for _ in range(args.repeats)]
        for name in runs[0]:
            best = min(run[name] for run in runs)
            print(json.dumps(dict(pipeline=split, stage=name, ms_per_window=round(1e3 * best / args.samples, 1),
                                  ms_per_frame=round(1e3 * best / frames, 4),
                                  windows=args.samples, repeats=args.repeats, config=args.config)), flush=True)
        total = sum(min(run[name] for run in runs) for name in runs[0])
        print(json.dumps(dict(pipeline=split, stage='total', ms_per_window=round(1e3 * total / args.samples, 1),
                              frames_per_cpu_s=round(frames / total, 1))), flush=True)


def forcing(factory, **forced):
    """``factory`` called with ``forced`` keywords over the caller's (LoadFrames passes its own ``backend`` and
    ``decoder_threads``, which ``functools.partial`` would let win)."""

    def make(*args, **kwargs):
        return factory(*args, **{**kwargs, **forced})

    return make


class _RecordingReader(VideoReader):
    """OpenCV reader that records ``(path, indices)`` of every read."""

    def __init__(self, record: list, path: str, *args, **kwargs) -> None:
        super().__init__(path, *args, **{**kwargs, 'backend': 'opencv'})
        self.record = record

    def read(self, indices):
        self.record.append((self.path, list(indices)))
        return super().read(indices)


def main() -> None:
    args = parse_args()
    cv2.setNumThreads(0)  # as in a DataLoader worker (env_cfg.mp_cfg.opencv_num_threads=0)
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'opentad_lora'))
    data = Path(args.data)
    if args.stages:
        report_stages(cfg, data, args)
        return
    configs = [(b, int(t)) for b in args.backends.split(',')
               for t in (args.decoder_threads.split(',') if b == 'pyav' else ['0'])]
    for split in ('train', 'test'):
        dataset = build_dataset(cfg, split, data)
        items = [pick_items(dataset, args.samples, repeat) for repeat in range(args.repeats)]
        for stage in ('decode', 'pipeline'):
            results = {c: [] for c in configs}
            for repeat in range(args.repeats):
                for config in configs:  # interleaved, so a slow moment of the machine hits every backend
                    results[config].append(time_run(dataset, *config, items[repeat], repeat, stage))
            for (backend, threads), runs in results.items():
                frames = runs[0][0]
                print(json.dumps(dict(
                    pipeline=split, stage=stage, backend=backend,
                    decoder_threads=threads if backend == 'pyav' else 'opencv default',
                    frames_per_repeat=frames, repeats=args.repeats,
                    wall_fps=round(max(f / w for f, w, _ in runs), 1),
                    cpu_fps=round(max(f / c for f, _, c in runs), 1),
                    config=args.config)), flush=True)


if __name__ == '__main__':
    main()
