"""Write a small temporal-action-detection dataset in OpenTAD's THUMOS-14 format, and a stand-in pretrained ViT.

    python tools/data/make_synthetic_thumos.py --out data/synthetic_thumos [--force]

Layout (exactly what ``configs/adatad/thumos`` reads for the real data)::

    OUT/annotations/thumos_14_anno.json    {"database": {video: {"subset", "duration", "frame", "annotations":
                                            [{"segment": [start_s, end_s], "label": name}, ...]}}}
    OUT/annotations/category_idx.txt       one class name per line
    OUT/raw_data/video/<video>.mp4         real mp4 files (OpenCV ``mp4v``)
    OUT/raw_data/frames/<video>/img_00001.jpg ...   (only with --frames)
    OUT/pretrained_videomae_tiny.pth       seeded ViT weights in our layout (stands in for a converted VideoMAE)

As in OpenTAD's THUMOS JSON, ``video_validation_*`` videos form the ``training`` subset and ``video_test_*`` videos
the ``validation`` subset. Every video has a grey, noisy, slowly flickering background with a small grey
distractor; an action of class ``k`` shows, for its exact duration, a large square of class ``k``'s colour that
moves across the frame in class ``k``'s direction. Actions have random lengths and positions and never overlap.
Nothing is rewritten when the dataset is already complete (``--force`` regenerates). Deterministic per ``--seed``.
"""
import argparse
import colorsys
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / 'configs' / 'quickstart' / 'adatad_qlora_synthetic_thumos.py'
PRETRAINED_NAME = 'pretrained_videomae_tiny.pth'
ANN_NAME = 'annotations/thumos_14_anno.json'
CLASS_MAP_NAME = 'annotations/category_idx.txt'
VIDEO_DIR = 'raw_data/video'
FRAME_DIR = 'raw_data/frames'
THUMOS_CLASSES = ['BaseballPitch', 'BasketballDunk', 'Billiards', 'CleanAndJerk', 'CliffDiving', 'CricketBowling',
                  'CricketShot', 'Diving', 'FrisbeeCatch', 'GolfSwing', 'HammerThrow', 'HighJump', 'JavelinThrow',
                  'LongJump', 'PoleVault', 'Shotput', 'SoccerPenalty', 'TennisSwing', 'ThrowDiscus',
                  'VolleyballSpiking']
LORA_KEYS = ('lora_r', 'lora_alpha', 'lora_dropout', 'quantize_bits', 'lora_targets', 'lora_cfg')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write a synthetic THUMOS-format TAD dataset and a seeded ViT file')
    parser.add_argument('--out', default='data/synthetic_thumos', help='output folder')
    parser.add_argument('--config', default=str(DEFAULT_CONFIG),
                        help=f'config whose model.backbone is initialised into {PRETRAINED_NAME}')
    parser.add_argument('--num-classes', type=int, default=4, help='at most 20 (THUMOS-14 class names)')
    parser.add_argument('--num-train', type=int, default=40, help='videos of the training subset')
    parser.add_argument('--num-val', type=int, default=16, help='videos of the validation subset')
    parser.add_argument('--min-frames', type=int, default=160, help='shortest video, frames')
    parser.add_argument('--max-frames', type=int, default=256, help='longest video, frames')
    parser.add_argument('--min-action', type=int, default=16, help='shortest action, frames')
    parser.add_argument('--max-action', type=int, default=48, help='longest action, frames')
    parser.add_argument('--max-actions', type=int, default=3, help='most actions per video')
    parser.add_argument('--fps', type=float, default=10.0)
    parser.add_argument('--width', type=int, default=64)
    parser.add_argument('--height', type=int, default=48)
    parser.add_argument('--frames', action='store_true', help='also write frame folders (img_00001.jpg, ...)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true', help='regenerate even if the dataset is complete')
    return parser.parse_args(argv)


def class_colour(label: int, num_classes: int) -> np.ndarray:
    """A saturated RGB colour per class, hues evenly spread."""
    red, green, blue = colorsys.hsv_to_rgb(label / num_classes, 0.9, 0.95)
    return np.array([red, green, blue]) * 255


def class_direction(label: int) -> np.ndarray:
    """Unit motion direction (x, y) of class ``label``'s square: eight compass directions in turn."""
    angle = 2 * np.pi * ((label * 3) % 8) / 8
    return np.array([np.cos(angle), np.sin(angle)])


def sample_actions(rng: np.random.Generator, num_frames: int, args: argparse.Namespace) -> List[tuple]:
    """Non-overlapping ``(start_frame, end_frame, label)`` with random lengths, gaps and classes."""
    actions: List[tuple] = []
    for _ in range(int(rng.integers(1, args.max_actions + 1))):
        length = int(rng.integers(args.min_action, args.max_action + 1))
        for _ in range(50):
            start = int(rng.integers(0, num_frames - length + 1))
            if all(start + length + 4 <= s or start >= e + 4 for s, e, _ in actions):
                actions.append((start, start + length, int(rng.integers(0, args.num_classes))))
                break
    return sorted(actions)


def render_video(rng: np.random.Generator, num_frames: int, actions: List[tuple],
                 args: argparse.Namespace) -> np.ndarray:
    """``(T, H, W, 3)`` RGB uint8 frames of one video."""
    height, width = args.height, args.width
    base = rng.uniform(70, 170)
    phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(20, 60)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    side = height // 2
    label_at = np.full(num_frames, -1)
    start_at = np.zeros(num_frames, dtype=int)
    origin: Dict[int, np.ndarray] = {}
    for start, end, label in actions:
        label_at[start:end] = label
        start_at[start:end] = start
        origin[start] = rng.uniform([0, 0], [width - side, height - side])
    distractor = rng.uniform([0, 0], [width - 8, height - 8])
    for t in range(num_frames):
        level = base + 15 * np.sin(phase + 2 * np.pi * t / period)
        frame = level + rng.normal(0, 10, size=(height, width, 3))
        dx, dy = (distractor + t * np.array([0.7, 0.4])) % [width - 8, height - 8]
        frame[int(dy):int(dy) + 8, int(dx):int(dx) + 8] = level + 50
        if label_at[t] >= 0:
            label = int(label_at[t])
            pos = origin[start_at[t]] + 1.5 * (t - start_at[t]) * class_direction(label)
            x, y = (np.abs((pos + [width - side, height - side]) % (2 * np.array([width - side, height - side]))
                           - [width - side, height - side])).astype(int)  # bounce off the borders
            frame[y:y + side, x:x + side] = class_colour(label, args.num_classes)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (frames.shape[2], frames.shape[1]))
    if not writer.isOpened():
        raise IOError(f'OpenCV cannot write mp4 (mp4v) video {path}')
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def write_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f'img_{index:05d}.jpg'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


def write_pretrained_backbone(config: str, path: Path, seed: int) -> None:
    """Save a seeded initialisation of the config's ViT (no adapters, no LoRA) in our key layout.

    torch and the model registry are imported here, so checking an existing dataset stays fast.
    """
    import torch
    from mmengine.config import Config

    import opentad_lora.models  # noqa: F401  (registers the backbones)
    from opentad_lora.engine.checkpoint import atomic_torch_save
    from opentad_lora.registry import MODELS

    backbone_cfg = Config.fromfile(config).model.backbone.to_dict()
    cfg = {k: v for k, v in backbone_cfg.items() if k not in LORA_KEYS}
    cfg.update(type='VisionTransformerAdapter', pretrained=None, adapter_index=[])
    torch.manual_seed(seed)
    atomic_torch_save(MODELS.build(cfg).state_dict(), path)


def is_complete(out: Path) -> bool:
    """Whether the annotation file, class map, every listed video and the pretrained file exist."""
    ann = out / ANN_NAME
    if not (ann.is_file() and (out / CLASS_MAP_NAME).is_file() and (out / PRETRAINED_NAME).is_file()):
        return False
    database = json.loads(ann.read_text())['database']
    return all((out / VIDEO_DIR / f'{name}.mp4').is_file() for name in database)


def make_dataset(args: argparse.Namespace) -> Dict[str, int]:
    """Write everything; returns the number of videos per subset."""
    if not 1 <= args.num_classes <= len(THUMOS_CLASSES):
        raise SystemExit(f'--num-classes must be in 1..{len(THUMOS_CLASSES)}')
    if args.min_action > args.max_action or args.max_action + 8 > args.min_frames:
        raise SystemExit('need --min-action <= --max-action and --max-action + 8 <= --min-frames')
    out = Path(args.out)
    (out / 'annotations').mkdir(parents=True, exist_ok=True)
    (out / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    classes = THUMOS_CLASSES[:args.num_classes]
    database = {}
    for subset, prefix, count in (('training', 'video_validation', args.num_train),
                                  ('validation', 'video_test', args.num_val)):
        for index in range(count):
            name = f'{prefix}_{index + 1:07d}'
            num_frames = int(rng.integers(args.min_frames, args.max_frames + 1))
            actions = sample_actions(rng, num_frames, args)
            frames = render_video(rng, num_frames, actions, args)
            write_mp4(out / VIDEO_DIR / f'{name}.mp4', frames, args.fps)
            if args.frames:
                write_frames(out / FRAME_DIR / name, frames)
            database[name] = dict(
                subset=subset, duration=round(num_frames / args.fps, 6), frame=num_frames,
                annotations=[dict(segment=[round(s / args.fps, 6), round(e / args.fps, 6)], label=classes[lab])
                             for s, e, lab in actions])
    (out / CLASS_MAP_NAME).write_text('\n'.join(classes) + '\n')
    (out / ANN_NAME).write_text(json.dumps(dict(database=database), indent=1))
    write_pretrained_backbone(args.config, out / PRETRAINED_NAME, args.seed)
    return dict(training=args.num_train, validation=args.num_val)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if not args.force and is_complete(out):
        print(f'{out} already holds a complete synthetic THUMOS dataset (use --force to regenerate)')
        return
    counts = make_dataset(args)
    print(f'wrote {counts["training"]} training + {counts["validation"]} validation videos, '
          f'{args.num_classes} classes and {PRETRAINED_NAME} to {out}')


if __name__ == '__main__':
    main()
