# Runtime of the depth configs: the shared runtime + LoRA checkpoint hook, and the depth visualisation hook, which
# writes colour-mapped depth / confidence / error PNGs when `tools/test.py --show-dir DIR` enables it.
_base_ = ['../../_base_/default_runtime.py', '../../_base_/lora_runtime.py']

default_hooks = dict(visualization=dict(type='DepthVisualizationHook', enable=False, out_dir=None, interval=1))
# MMEngine's LogProcessor averages every logged key matching `.*loss.*` over its last 10 values, validation metrics
# included: without this the logged `depth/val_loss` (text log and TensorBoard) would be the mean of all validations
# so far, not this one's (the returned metrics and `save_best` were right).
log_processor = dict(custom_cfg=[dict(data_src='depth/val_loss', method_name='current')])
