"""Registries of opentad_lora.

Each registry is a child of the MMEngine root registry of the same role, so configs with
``default_scope='opentad_lora'`` find our modules first and fall back to MMEngine's (``'AdamW'``, ``'CheckpointHook'``,
...). ``locations`` are imported lazily on the first lookup, which registers every module of that package.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import INFERENCERS as MMENGINE_INFERENCERS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNER_CONSTRUCTORS as MMENGINE_RUNNER_CONSTRUCTORS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

_ENGINE = ['opentad_lora.engine']

RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, locations=_ENGINE)
RUNNER_CONSTRUCTORS = Registry('runner constructor', parent=MMENGINE_RUNNER_CONSTRUCTORS, locations=_ENGINE)
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, locations=_ENGINE)
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, locations=_ENGINE)
STRATEGIES = Registry('strategy', parent=MMENGINE_STRATEGIES, locations=_ENGINE)
LOG_PROCESSORS = Registry('log processor', parent=MMENGINE_LOG_PROCESSORS, locations=_ENGINE)
OPTIMIZERS = Registry('optimizer', parent=MMENGINE_OPTIMIZERS, locations=_ENGINE)
OPTIM_WRAPPERS = Registry('optim wrapper', parent=MMENGINE_OPTIM_WRAPPERS, locations=_ENGINE)
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, locations=_ENGINE)
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=MMENGINE_PARAM_SCHEDULERS, locations=_ENGINE)
MODEL_WRAPPERS = Registry('model wrapper', parent=MMENGINE_MODEL_WRAPPERS, locations=_ENGINE)

DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, locations=['opentad_lora.datasets'])
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, locations=['opentad_lora.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, locations=['opentad_lora.datasets'])

MODELS = Registry('model', parent=MMENGINE_MODELS, locations=['opentad_lora.models'])
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=MMENGINE_WEIGHT_INITIALIZERS,
                               locations=['opentad_lora.models'])
TASK_UTILS = Registry('task util', parent=MMENGINE_TASK_UTILS, locations=['opentad_lora.models'])

METRICS = Registry('metric', parent=MMENGINE_METRICS, locations=['opentad_lora.evaluation'])
EVALUATOR = Registry('evaluator', parent=MMENGINE_EVALUATOR, locations=['opentad_lora.evaluation'])

VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, locations=['opentad_lora.visualization'])
VISBACKENDS = Registry('vis backend', parent=MMENGINE_VISBACKENDS, locations=['opentad_lora.visualization'])
INFERENCERS = Registry('inferencer', parent=MMENGINE_INFERENCERS, locations=['opentad_lora.apis'])
FUNCTIONS = Registry('function', parent=MMENGINE_FUNCTIONS, locations=['opentad_lora.datasets'])


def register_all_modules() -> None:
    """Import every package of opentad_lora that registers modules (what scripts need before building a Runner).

    The registries import their ``locations`` lazily on the first lookup; scripts that build from configs call this
    once instead, so that every model, dataset, metric, hook and visualiser is registered up front.
    """
    import opentad_lora.datasets  # noqa: F401
    import opentad_lora.engine  # noqa: F401
    import opentad_lora.evaluation  # noqa: F401
    import opentad_lora.models  # noqa: F401
    import opentad_lora.visualization  # noqa: F401
