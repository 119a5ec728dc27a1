"""CAD-Recode: point cloud -> CadQuery code with a decoder-only LLM (Qwen2/Qwen3) and LoRA/QLoRA."""
from .cad_recode import CADRecodeLoRA
from .llm import build_causal_lm, read_point_encoder_state, save_hf_folder
from .point_encoder import FourierPointEncoder

__all__ = ['CADRecodeLoRA', 'FourierPointEncoder', 'build_causal_lm', 'read_point_encoder_state', 'save_hf_folder']
