"""``LoRACheckpointHook``: LoRA-sized Runner checkpoints and PEFT adapter folders during training."""
import logging
import os
import re
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional, Set

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

from opentad_lora.peft import has_lora, trainable_state_dict
from opentad_lora.registry import HOOKS
from .ema_hook import ema_weights
from .export import adapter_root, save_adapter_folder, save_merged_model

STEP_DIR = 'lora_weights_step_{:06d}'
FINAL_DIR = 'final_lora_weights'
MERGED_DIR = 'merged_model'
TRIMMED_META_KEY = 'lora_trainable_only'
_STEP_RE = re.compile(r'^lora_weights_step_(\d+)$')


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class LoRACheckpointHook(Hook):
    """Keep Runner checkpoints of LoRA models small and export adapters as training goes.

    Checkpoints: with ``trainable_only=True`` and a model containing LoRA layers, ``checkpoint['state_dict']`` keeps
    only trainable parameters and buffers (``meta['lora_trainable_only']=True`` marks it); optimizer, schedulers and
    message hub are kept, so resume works. The frozen base is rebuilt at construction (``pretrained=...``), hence
    when such a checkpoint is loaded the frozen tensors it lacks are not reported as missing (a trainable tensor
    that is missing still is, and ``strict=True`` loads pass).

    Adapter folders (PEFT format, via :func:`save_adapter_folder`, relative to the unwrapped model; a model with
    its own ``save_adapter`` adds its files): ``<out_dir>/lora_weights_step_XXXXXX/`` every ``interval``
    iterations (the newest ``max_keep`` kept), ``<out_dir>/final_lora_weights/`` after training, and with
    ``save_merged=True`` also ``<out_dir>/merged_model/``: the model's own ``export_merged`` when it has one (e.g.
    CAD-Recode's HF layout), else ``model.pth``, a plain merged state dict computed on a copy of the model. Files
    are written by the main process only, with the averaged weights when an EMA hook runs (as in the checkpoints).

    Args:
        trainable_only: Trim checkpoints to trainable tensors + buffers.
        interval: Save an adapter folder every ``interval`` training iterations; ``-1`` never.
        max_keep: Keep at most this many step folders (oldest removed); ``-1`` keeps all.
        save_final: Save ``final_lora_weights/`` after training.
        save_merged: Also save ``merged_model/model.pth`` after training.
        adapter_name: Adapter to export.
        out_dir: Folder for the exports; ``None`` means the runner's ``work_dir``.
    """

    priority = 'LOW'  # after EMAHook (NORMAL), which swaps EMA weights into the checkpoint before saving

    def __init__(self, trainable_only: bool = True, interval: int = -1, max_keep: int = -1, save_final: bool = True,
                 save_merged: bool = False, adapter_name: str = 'default', out_dir: Optional[str] = None) -> None:
        if max_keep == 0 or max_keep < -1:
            raise ValueError(f'max_keep must be -1 (keep all) or positive, got {max_keep}.')
        self.trainable_only = trainable_only
        self.interval = interval
        self.max_keep = max_keep
        self.save_final = save_final
        self.save_merged = save_merged
        self.adapter_name = adapter_name
        self.out_dir = out_dir
        self._load_hook = None

    def _out_dir(self, runner) -> str:
        return self.out_dir or runner.work_dir

    def before_train(self, runner) -> None:
        if not has_lora(_unwrap(runner.model)) and (self.interval > 0 or self.save_final or self.save_merged):
            print_log('LoRACheckpointHook: the model has no LoRA layer, so no adapter folders will be written.',
                      logger='current', level=logging.WARNING)

    # --- Runner checkpoints ------------------------------------------------------------------------------------

    def before_save_checkpoint(self, runner, checkpoint: Dict[str, Any]) -> None:
        model = _unwrap(runner.model)
        if not (self.trainable_only and has_lora(model)):
            return
        keep = set(trainable_state_dict(model))
        state = checkpoint['state_dict']
        trimmed = OrderedDict((key, value) for key, value in state.items() if key in keep)
        if hasattr(state, '_metadata'):  # module versions, used by _load_from_state_dict
            trimmed._metadata = state._metadata
        checkpoint['state_dict'] = trimmed
        checkpoint.setdefault('meta', {})[TRIMMED_META_KEY] = True

    def after_load_checkpoint(self, runner, checkpoint: Dict[str, Any]) -> None:
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None
        if not checkpoint.get('meta', {}).get(TRIMMED_META_KEY):
            return
        model = _unwrap(runner.model)
        frozen: Set[str] = set(model.state_dict()) - set(trainable_state_dict(model))
        present = set(checkpoint.get('state_dict', checkpoint))

        def drop_frozen_missing(module: nn.Module, incompatible) -> None:
            # mmengine's and torch's load_state_dict share these lists with the post hooks: edit them in place.
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in frozen]
            self._load_hook.remove()
            self._load_hook = None

        self._load_hook = model.register_load_state_dict_post_hook(drop_frozen_missing)
        print_log(f'LoRA checkpoint: {len(present)} tensors from the file; {len(frozen)} frozen tensors keep the '
                  'values built at construction (pretrained base).', logger='current')

    # --- adapter folders ---------------------------------------------------------------------------------------

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if self.interval > 0 and self.every_n_train_iters(runner, self.interval):
            self._save_step(runner, runner.iter + 1)

    def after_train(self, runner) -> None:
        self._save_final(runner)

    @master_only
    def _save_step(self, runner, step: int) -> None:
        model = _unwrap(runner.model)
        if not has_lora(model):
            return
        out_dir = self._out_dir(runner)
        with ema_weights(runner):
            path = save_adapter_folder(model, os.path.join(out_dir, STEP_DIR.format(step)), self.adapter_name)
        print_log(f'Saved LoRA adapter of step {step} to {path}', logger='current')
        if self.max_keep > 0:
            steps = sorted((int(m.group(1)), name) for name in os.listdir(out_dir) if (m := _STEP_RE.match(name)))
            for _, name in steps[:-self.max_keep]:
                shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)

    @master_only
    def _save_final(self, runner) -> None:
        model = _unwrap(runner.model)
        if not has_lora(model):
            return
        out_dir = self._out_dir(runner)
        with ema_weights(runner):
            if self.save_final:
                path = save_adapter_folder(model, os.path.join(out_dir, FINAL_DIR), self.adapter_name)
                print_log(f'Saved final LoRA adapter to {path}', logger='current')
            if self.save_merged:
                root = adapter_root(model)
                if callable(getattr(root, 'export_merged', None)):  # a model with its own format (CAD-Recode: HF)
                    path = root.export_merged(Path(out_dir) / MERGED_DIR)
                else:
                    path = save_merged_model(model, os.path.join(out_dir, MERGED_DIR))
                print_log(f'Saved merged model to {path}', logger='current')
