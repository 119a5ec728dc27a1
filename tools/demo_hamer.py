"""Reconstruct hands in images with a (LoRA-fine-tuned) HaMeR model; write overlays, side views and meshes.

    python tools/demo_hamer.py IMAGE_OR_FOLDER --checkpoint CKPT [--config CONFIG] [--boxes boxes.json]
                               [--out-dir demo_out] [--save-mesh] [--side-view] [--rescale 2.0] [--focal-length F]

``CKPT`` is a Runner checkpoint (``iter_N.pth``/``best_*.pth``; the config is read from its ``meta.cfg`` unless
``--config`` is given) or an adapter folder (``final_lora_weights``/``lora_weights_step_N``, needs ``--config``).
The frozen base is rebuilt from the config (``pretrained_model_path``, MANO file), as in training.

Hands: ``--boxes`` is a JSON ``{image file name: [[x1, y1, x2, y2, is_right], ...]}`` (e.g. from a hand
detector); each box is squared and enlarged ``--rescale`` times, as HaMeR's demo does. Without it every image is
taken as one right-hand crop. Left hands are mirrored into the right-hand model and mirrored back.

Camera (HaMeR's demo): the crop camera ``(s, tx, ty)`` becomes a translation in the full image's camera with
``cam_crop_to_full`` (principal point at the image centre). Without ``--focal-length`` the focal length is HaMeR's
``focal_length / image_size * max(H, W)`` (5000 / 256 * the longer side, a narrow lens): the overlay is right
whatever the true lens, but the depth is the true one times (that focal / the true focal), e.g. ~8x too far for
the synthetic quickstart's ~500 px lens. Give the camera's focal length in pixels for metric ``.obj`` depths.

Writes per image ``<stem>_overlay.png`` (all hands over the image), and per hand ``<stem>_<k>_side.png`` (mesh
turned 90 degrees about the vertical axis) with ``--side-view`` and ``<stem>_<k>.obj`` (camera-frame vertices,
metres) with ``--save-mesh``.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

import opentad_lora.models  # noqa: E402,F401  (registers the model parts)
from opentad_lora.datasets.hamer import crop_affine  # noqa: E402
from opentad_lora.engine.checkpoint import load_checkpoint_file  # noqa: E402
from opentad_lora.models.hamer import cam_crop_to_full  # noqa: E402
from opentad_lora.models.hamer.renderer import render_mesh, side_view_vertices  # noqa: E402
from opentad_lora.peft import load_adapter, trainable_state_dict  # noqa: E402
from opentad_lora.registry import MODELS  # noqa: E402

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='HaMeR demo: hand meshes from images')
    parser.add_argument('inputs', help='an image or a folder of images')
    parser.add_argument('--checkpoint', required=True, help='Runner checkpoint (.pth) or LoRA adapter folder')
    parser.add_argument('--config', help='config file (default: the one stored in the checkpoint)')
    parser.add_argument('--boxes', help='JSON {image name: [[x1, y1, x2, y2, is_right], ...]}')
    parser.add_argument('--out-dir', default='demo_out')
    parser.add_argument('--save-mesh', action='store_true', help='write one .obj per hand')
    parser.add_argument('--side-view', action='store_true', help='write one side-view PNG per hand')
    parser.add_argument('--rescale', type=float, default=2.0, help='box enlargement for --boxes (HaMeR: 2.0)')
    parser.add_argument('--focal-length', type=float,
                        help="the camera's focal length in pixels (default: HaMeR's 5000 / 256 * max(H, W))")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return parser.parse_args(argv)


def load_model(checkpoint: str, config: Optional[str], device: str) -> torch.nn.Module:
    """Build the config's model (frozen base from its pretrained files) and load the checkpoint's weights."""
    path = Path(checkpoint)
    state = None
    if path.is_dir():
        if config is None:
            raise SystemExit(f'{path} is an adapter folder: give --config.')
        cfg = Config.fromfile(config)
    else:
        ckpt = load_checkpoint_file(path)
        state = ckpt.get('state_dict', ckpt)
        if config is not None:
            cfg = Config.fromfile(config)
        elif 'cfg' in ckpt.get('meta', {}):
            cfg = Config.fromstring(ckpt['meta']['cfg'], '.py')
        else:
            raise SystemExit(f'{path} stores no config (meta.cfg): give --config.')
    model = MODELS.build(cfg.model)
    if state is None:
        load_adapter(model, path)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        trainable_missing = sorted(set(missing) & set(trainable_state_dict(model)))
        if unexpected or trainable_missing:
            raise SystemExit(f'{path} does not fit the config\'s model: unexpected {unexpected[:5]}, '
                             f'missing trainable {trainable_missing[:5]}')
    return model.to(device).eval()


def list_images(inputs: str) -> List[Path]:
    path = Path(inputs)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
    elif path.is_file():
        images = [path]
    else:
        raise SystemExit(f'{path} is neither an image nor a folder.')
    if not images:
        raise SystemExit(f'No images ({", ".join(IMG_EXTENSIONS)}) in {path}.')
    return images


def hand_boxes(image_name: str, image_shape: Tuple[int, int], boxes: Optional[Dict[str, Any]],
               rescale: float) -> List[Tuple[np.ndarray, float, bool]]:
    """``(centre, side, is_right)`` of every hand crop in the image."""
    height, width = image_shape
    if boxes is None:  # pixel centres are integers: the image centre is at ((W - 1) / 2, (H - 1) / 2)
        return [(np.array([(width - 1) / 2, (height - 1) / 2]), float(max(width, height)), True)]
    crops = []
    for x1, y1, x2, y2, is_right in boxes.get(image_name, []):
        crops.append((np.array([(x1 + x2) / 2, (y1 + y2) / 2]), rescale * max(x2 - x1, y2 - y1), bool(is_right)))
    return crops


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Wavefront OBJ: ``v x y z`` lines then 1-based ``f a b c`` lines."""
    lines = [f'v {x:.6f} {y:.6f} {z:.6f}' for x, y, z in vertices]
    lines += [f'f {a + 1} {b + 1} {c + 1}' for a, b, c in faces]
    path.write_text('\n'.join(lines) + '\n')


@torch.no_grad()
def reconstruct(model: torch.nn.Module, image: np.ndarray, crops: Sequence[Tuple[np.ndarray, float, bool]],
                focal_length: Optional[float] = None) -> List[Dict[str, np.ndarray]]:
    """Per crop: camera-frame vertices, faces (winding flipped for left hands) and the full image's intrinsics."""
    size = model.image_size
    batch = []
    for center, side, is_right in crops:  # a left hand is cut from the mirrored image, as a right hand
        source = image if is_right else image[:, ::-1]
        center = center if is_right else np.array([image.shape[1] - 1 - center[0], center[1]])
        patch = cv2.warpAffine(np.ascontiguousarray(source), crop_affine(center, side, 0.0, size), (size, size),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        batch.append(torch.from_numpy(patch.transpose(2, 0, 1).copy()))
    device = next(model.parameters()).device
    inputs = model.data_preprocessor({'inputs': torch.stack(batch).to(device)}, False)['inputs']
    output = model.predict_hands(inputs)
    if focal_length is None:
        focal_length = model.focal_length / model.image_size * max(image.shape[:2])
    return place_hands(output['pred_cam'].cpu(), output['vertices'].cpu(), model.mano.faces, crops,
                       image.shape[:2], focal_length)


def place_hands(pred_cam: torch.Tensor, vertices: torch.Tensor, faces: np.ndarray,
                crops: Sequence[Tuple[np.ndarray, float, bool]], image_shape: Tuple[int, int],
                focal_length: float) -> List[Dict[str, np.ndarray]]:
    """Crop cameras ``(N, 3)`` and MANO vertices ``(N, V, 3)`` -> hands in the full image's camera (HaMeR's demo).

    Each hand is ``dict(vertices (V, 3) camera-frame metres, faces, K (3, 3))``: the translation is
    ``cam_crop_to_full`` with ``focal_length`` and the image centre as principal point, so the mesh projects onto
    the crop's box exactly where the crop camera put it. A left hand's solution is mirrored back (``tx`` and ``x``
    negated, faces rewound).
    """
    height, width = image_shape
    principal = torch.tensor([[(width - 1) / 2, (height - 1) / 2]])  # pixel centres are integers (OpenCV)
    cam = pred_cam.detach().float().clone()
    K = np.array([[focal_length, 0, principal[0, 0]], [0, focal_length, principal[0, 1]], [0, 0, 1]])
    hands = []
    for k, (center, side, is_right) in enumerate(crops):
        sign = 1.0 if is_right else -1.0
        cam[k, 1] *= sign
        translation = cam_crop_to_full(cam[k:k + 1], torch.as_tensor(center, dtype=torch.float32)[None],
                                       torch.tensor([side], dtype=torch.float32), principal,
                                       torch.tensor([focal_length], dtype=torch.float32))[0]
        verts = vertices[k].detach().double().numpy().copy()
        verts[:, 0] *= sign
        hand_faces = faces if is_right else faces[:, ::-1]
        hands.append(dict(vertices=verts + translation.double().numpy(), faces=np.ascontiguousarray(hand_faces),
                          K=K.copy()))
    return hands


def draw_hands(image: np.ndarray, hands: Sequence[Dict[str, np.ndarray]],
               side_view: bool = False) -> Tuple[np.ndarray, List[np.ndarray], List[np.ndarray]]:
    """``(overlay of all hands, per-hand covered-pixel masks, per-hand side views (if ``side_view``))``."""
    shape = image.shape[:2]
    overlay, masks, sides = image, [], []
    for hand in hands:
        overlay, mask = render_mesh(hand['vertices'], hand['faces'], hand['K'], shape, background=overlay, alpha=0.8)
        masks.append(mask)
        if side_view:
            sides.append(render_mesh(side_view_vertices(hand['vertices']), hand['faces'], hand['K'], shape,
                                     background=np.full_like(image, 255))[0])
    return overlay, masks, sides


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    model = load_model(args.checkpoint, args.config, args.device)
    boxes = json.loads(Path(args.boxes).read_text()) if args.boxes else None
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for image_path in list_images(args.inputs):
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f'Cannot read image {image_path}.')
        crops = hand_boxes(image_path.name, image.shape[:2], boxes, args.rescale)
        hands = reconstruct(model, image, crops, args.focal_length) if crops else []
        overlay, _, sides = draw_hands(image, hands, args.side_view)
        for k, hand in enumerate(hands):
            if args.side_view:
                cv2.imwrite(str(out_dir / f'{image_path.stem}_{k}_side.png'), sides[k])
            if args.save_mesh:
                write_obj(out_dir / f'{image_path.stem}_{k}.obj', hand['vertices'], hand['faces'])
        cv2.imwrite(str(out_dir / f'{image_path.stem}_overlay.png'), overlay)
        print(f'{image_path}: {len(crops)} hand(s) -> {out_dir}')


if __name__ == '__main__':
    main()
