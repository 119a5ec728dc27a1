# Runtime of the depth configs: the shared runtime + LoRA checkpoint hook, and the depth visualisation hook, which
# writes colour-mapped depth / confidence / error PNGs when `tools/test.py --show-dir DIR` enables it.
_base_ = ['../../_base_/default_runtime.py', '../../_base_/lora_runtime.py']

default_hooks = dict(visualization=dict(type='DepthVisualizationHook', enable=False, out_dir=None, interval=1))
