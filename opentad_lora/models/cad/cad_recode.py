"""``CADRecodeLoRA``: point cloud -> CadQuery program with a decoder-only LLM and LoRA/QLoRA (CAD-Recode)."""
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch import Tensor

from opentad_lora.peft import (apply_lora, iter_lora_layers, load_adapter, save_adapter, saved_module_names,
                               set_adapter)
from opentad_lora.registry import MODELS
from .llm import build_causal_lm, read_point_encoder_state, save_hf_folder
from .point_encoder import FourierPointEncoder, encoder_has_normals
from .tokenization import CADCodeTokenizer, require_transformers

SIDECAR = 'cad_recode.json'  # written next to adapter files: how to rebuild the frozen base


@MODELS.register_module()
class CADRecodeLoRA(BaseModel):
    """CAD-Recode: ``[point embeddings] <|im_start|> code <|endoftext|>`` through a Qwen2/Qwen3 causal LM.

    The point encoder (Fourier features -> one linear layer) turns each of the N points into one input embedding
    in front of the program's tokens; the LLM is trained with next-token cross-entropy on the program and its end
    token, and programs are generated greedily. LoRA/QLoRA goes through ``opentad_lora.peft.apply_lora`` on the
    LLM's projections; the point encoder is always trained in full and saved with each adapter.

    Args:
        llm: Arguments of :func:`build_causal_lm`: ``pretrained=<local HF folder>`` (a Qwen base, a CAD-Recode
            checkpoint or a ``merged_model/``; its ``point_encoder.*`` weights are loaded when present) or
            ``config=dict(model_type='qwen2', ...)`` + ``seed`` for a small model built from scratch; ``dtype``.
        tokenizer: Local HF tokenizer folder (often the same as ``llm.pretrained``).
        lora: A LoRA config dict (see ``LoRAConfig``), e.g. ``targets=['q_proj', 'k_proj', 'v_proj', 'o_proj',
            'gate_proj', 'up_proj', 'down_proj']`` and ``quantize_bits=4, compute_dtype='bf16'`` for QLoRA.
            ``point_encoder`` is added to ``modules_to_save``. None trains everything (CAD-Recode's recipe) or runs
            a merged model.
        num_freqs: Frequencies of the point encoder (CAD-Recode: 8 -> 51 features).
        point_normals: Whether points carry normals (CAD-Recode v1: 54 encoder inputs, random sampling, sorted by z)
            or not (v1.5: 51 inputs, furthest point sampling); None: as the point encoder stored in
            ``llm.pretrained`` (v1.5 when there is none). ``point_recipe`` names the matching preprocessing.
        max_new_tokens: Generation budget in ``predict`` (CAD-Recode: 768).
        gradient_checkpointing: Recompute LLM activations in backward (memory for time).
        save_tokenizer: ``save_adapter`` also writes the tokenizer files next to the adapter (as seed 002), so an
            adapter folder carries everything but the frozen base weights.
    """

    def __init__(self, llm: Mapping[str, Any], tokenizer: str, lora: Optional[Mapping[str, Any]] = None,
                 num_freqs: int = 8, point_normals: Optional[bool] = None, max_new_tokens: int = 768,
                 gradient_checkpointing: bool = False, save_tokenizer: bool = True,
                 data_preprocessor: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.llm_cfg, self.tokenizer_path, self.num_freqs = dict(llm), str(tokenizer), num_freqs
        self.max_new_tokens, self.save_tokenizer = max_new_tokens, save_tokenizer
        self.tokenizer = CADCodeTokenizer(tokenizer)
        self.llm = build_causal_lm(**self.llm_cfg, vocab_size=len(self.tokenizer))
        pretrained = self.llm_cfg.get('pretrained')
        encoder_state = read_point_encoder_state(pretrained) if pretrained else {}
        if encoder_state:
            stored = encoder_has_normals(encoder_state, num_freqs, str(pretrained))
            if point_normals is not None and bool(point_normals) != stored:
                raise ValueError(f'point_normals={point_normals} but the point encoder in {pretrained} was trained '
                                 f'{"with" if stored else "without"} normals; leave point_normals=None.')
            point_normals = stored
        self.point_encoder = FourierPointEncoder(self.llm.get_input_embeddings().embedding_dim, num_freqs,
                                                 normals=bool(point_normals))
        if encoder_state:
            self.point_encoder.load_state_dict(encoder_state)
        elif lora is None and pretrained:
            MMLogger.get_current_instance().warning(
                f'{pretrained} has no point_encoder.* weights: the point encoder starts from random values '
                '(until an adapter with its own point encoder is loaded).')
        if gradient_checkpointing:  # transformers 5 renamed it; 4.x only has the old name
            if hasattr(self.llm, 'activation_checkpointing_enable'):
                self.llm.activation_checkpointing_enable({'use_reentrant': False})
            else:
                self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
        self._saved_states: Dict[str, Dict[str, Tensor]] = {}  # per adapter: its modules_to_save tensors
        self.lora_report = None
        if lora is not None:
            lora = dict(lora)
            lora['modules_to_save'] = list(dict.fromkeys([*lora.get('modules_to_save', []), 'point_encoder']))
            lora.setdefault('base_model_name_or_path', pretrained)
            self.lora_report = apply_lora(self, lora)
            MMLogger.get_current_instance().info(str(self.lora_report))

    def init_weights(self) -> None:
        """Nothing to do: weights are loaded or seeded in ``__init__`` (HF's own ``init_weights`` would re-draw the
        pretrained base, so the Runner must not reach it)."""

    @property
    def point_recipe(self) -> str:
        """The ``LoadCADPointCloud`` recipe this model's point encoder expects: ``'v1'`` (xyz + normals, random
        sampling sorted by z) or ``'v1.5'`` (xyz, furthest point sampling)."""
        return 'v1' if self.point_encoder.normals else 'v1.5'

    @property
    def llm_dtype(self) -> torch.dtype:
        """dtype of the LLM's (never quantized) token embeddings: the dtype the base was loaded or built in."""
        return self.llm.get_input_embeddings().weight.dtype

    def _sidecar(self, llm_cfg: Mapping[str, Any], tokenizer: str) -> str:
        return json.dumps(dict(llm=dict(llm_cfg), tokenizer=tokenizer, num_freqs=self.num_freqs,
                               point_normals=self.point_encoder.normals, max_new_tokens=self.max_new_tokens),
                          indent=2)

    # -- forward -----------------------------------------------------------------------------------------------
    def _stack_points(self, inputs: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        points = inputs if isinstance(inputs, Tensor) else torch.stack(list(inputs))
        return points.to(self.point_encoder.projection.weight.device, torch.float32)

    def _embed(self, points: Tensor, ids: Tensor) -> Tensor:
        """Point embeddings followed by the token embeddings of ``ids``, in the LLM's dtype."""
        tokens = self.llm.get_input_embeddings()(ids)
        return torch.cat([self.point_encoder(points).to(tokens.dtype), tokens], dim=1)

    def text_logits(self, points: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Logits ``(B, T, V)`` at the ``T`` token positions (position t predicts token t + 1)."""
        attention = torch.cat([mask.new_ones(points.shape[:2]), mask], dim=1)
        out = self.llm(inputs_embeds=self._embed(points, ids), attention_mask=attention,
                       logits_to_keep=ids.shape[1], use_cache=False)
        return out.logits

    def _tokens(self, data_samples: Sequence[BaseDataElement], device: torch.device) -> tuple:
        if data_samples is None or any('input_ids' not in s for s in data_samples):
            raise KeyError('CADRecodeLoRA needs "input_ids" in every data sample: add TokenizeCADCode to the '
                           'dataset pipeline.')
        ids, mask = self.tokenizer.pad([s.input_ids for s in data_samples])
        return ids.to(device), mask.to(device)

    def loss(self, inputs: Union[Tensor, Sequence[Tensor]], data_samples: Sequence[BaseDataElement]) -> dict:
        """Mean next-token cross-entropy over the program tokens and the end token (point slots are inputs only)."""
        points = self._stack_points(inputs)
        ids, mask = self._tokens(data_samples, points.device)
        logits = self.text_logits(points, ids, mask)[:, :-1]
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return dict(loss=F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100))

    @torch.no_grad()
    def generate(self, points: Tensor, max_new_tokens: Optional[int] = None) -> List[str]:
        """Greedy decoding after ``[points] <|im_start|>``; returns one program per point cloud."""
        transformers = require_transformers()
        points = self._stack_points(points)
        start = torch.full((len(points), 1), self.tokenizer.start_id, dtype=torch.long, device=points.device)
        embeds = self._embed(points, start)
        config = transformers.GenerationConfig(
            max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
            eos_token_id=self.tokenizer.end_id, pad_token_id=self.tokenizer.pad_id)
        ids = self.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                device=points.device), generation_config=config)
        return [self.tokenizer.decode(row.tolist()) for row in ids]

    def predict(self, inputs: Union[Tensor, Sequence[Tensor]],
                data_samples: Optional[Sequence[BaseDataElement]] = None) -> List[BaseDataElement]:
        """Data samples (metainfo kept, ``input_ids`` dropped) with the generated program in ``pred_code``."""
        codes = self.generate(self._stack_points(inputs))
        samples = data_samples or [BaseDataElement() for _ in codes]
        return [BaseDataElement(metainfo=s.metainfo, pred_code=code) for s, code in zip(samples, codes)]

    def forward(self, inputs: Union[Tensor, Sequence[Tensor]],
                data_samples: Optional[Sequence[BaseDataElement]] = None, mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            points = self._stack_points(inputs)
            return self.text_logits(points, *self._tokens(data_samples, points.device))
        raise ValueError(f'Invalid mode {mode!r}; use "loss", "predict" or "tensor".')

    # -- adapters ----------------------------------------------------------------------------------------------
    @property
    def active_adapter(self) -> Optional[str]:
        return next((layer.active_adapter for _, layer in iter_lora_layers(self)), None)

    def _saved_modules_state(self) -> Dict[str, Tensor]:
        """A copy of the ``modules_to_save`` tensors (point encoder, ...), keyed as in ``state_dict``."""
        return {f'{name}.{k}': v.detach().clone() for name in saved_module_names(self)
                for k, v in self.get_submodule(name).state_dict().items()}

    def _restore_saved_modules(self, adapter_name: str) -> None:
        if adapter_name in self._saved_states:
            self.load_state_dict(self._saved_states[adapter_name], strict=False)

    def set_adapter(self, adapter_name: str) -> None:
        """Switch to ``adapter_name``: its LoRA weights and its own copy of the fully trained modules (the point
        encoder; PEFT also keeps ``modules_to_save`` per adapter). The frozen base is not touched."""
        if self.active_adapter is not None:
            self._saved_states[self.active_adapter] = self._saved_modules_state()
        set_adapter(self, adapter_name)
        self._restore_saved_modules(adapter_name)

    def load_adapter(self, path: Union[str, Path], adapter_name: str = 'default') -> None:
        """Add the adapter folder ``path`` as ``adapter_name`` without reloading the base; the active adapter
        stays active (``set_adapter`` switches)."""
        active = self.active_adapter
        if active is not None:
            self._saved_states[active] = self._saved_modules_state()
        load_adapter(self, path, adapter_name)
        self._saved_states[adapter_name] = self._saved_modules_state()
        if active is not None and active != adapter_name:
            self._restore_saved_modules(active)

    def save_adapter(self, out_dir: Union[str, Path], adapter_name: Optional[str] = None) -> Path:
        """PEFT files (LoRA + point encoder), ``cad_recode.json`` naming the base (for ``tools/cad_infer.py``) and,
        with ``save_tokenizer``, the tokenizer files. ``LoRACheckpointHook`` writes ``final_lora_weights/`` here."""
        out_dir = save_adapter(self, out_dir, adapter_name or self.active_adapter)
        if self.save_tokenizer:
            self.tokenizer.tokenizer.save_pretrained(str(out_dir))
        (out_dir / SIDECAR).write_text(self._sidecar(self.llm_cfg, self.tokenizer_path))
        return out_dir

    def merged_llm_state(self) -> Dict[str, Tensor]:
        """The LLM's state dict with the active adapter folded into each wrapped weight (float32), leaving the
        model unchanged; quantized bases are dequantized first, so the merge itself adds no rounding."""
        layers = dict(iter_lora_layers(self.llm))
        prefixes = tuple(f'{name}.' for name in layers)
        state = {k: v for k, v in self.llm.state_dict().items() if not k.startswith(prefixes)}
        for name, layer in layers.items():
            weight = layer.base_weight().detach().float()
            if layer.active_adapter is not None and not layer.merged and not layer.adapters_disabled:
                weight = weight + layer.delta_weight(layer.active_adapter).detach().to(weight.device)
            state[f'{name}.weight'] = weight
            if layer.bias is not None:
                state[f'{name}.bias'] = layer.bias.detach().float()
        return state

    def export_merged(self, out_dir: Union[str, Path], dtype: Union[None, str, torch.dtype] = None) -> Path:
        """Write ``out_dir`` in the HF layout: merged LLM + ``point_encoder.*`` (CAD-Recode's checkpoint layout),
        tokenizer files and ``cad_recode.json``; it loads back as ``llm=dict(pretrained=out_dir)``, ``lora=None``.

        Args:
            dtype: dtype of the saved LLM weights; default: the LLM's own dtype (e.g. bfloat16), which is also the
                ``config.json`` dtype a later load defaults to.
        """
        out_dir = Path(out_dir)
        save_hf_folder(self.llm, self.point_encoder, out_dir, dtype or self.llm_dtype, state=self.merged_llm_state())
        self.tokenizer.tokenizer.save_pretrained(str(out_dir))
        (out_dir / SIDECAR).write_text(self._sidecar(dict(pretrained=str(out_dir)), str(out_dir)))
        return out_dir
