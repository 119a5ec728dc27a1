"""register_all_modules makes every family's modules buildable by name under the opentad_lora scope."""
import pytest

from opentad_lora.registry import (DATASETS, HOOKS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, VISBACKENDS,
                                   register_all_modules)


@pytest.mark.parametrize('registry, name', [
    (MODELS, 'TADDetector'), (MODELS, 'VisionTransformerQLoRA'), (MODELS, 'ViTLoRA'), (MODELS, 'DepthEstimator'),
    (MODELS, 'HaMeRLoRA'), (MODELS, 'CADRecodeLoRA'), (MODELS, 'LoRAModel'), (DATASETS, 'ThumosSlidingDataset'),
    (METRICS, 'TADmAPMetric'), (METRICS, 'DepthMetric'), (METRICS, 'HandMeshMetric'), (METRICS, 'CADMetric'),
    (HOOKS, 'LoRACheckpointHook'), (OPTIM_WRAPPER_CONSTRUCTORS, 'LoRAOptimWrapperConstructor'),
    (VISBACKENDS, 'OptionalTensorboardVisBackend'),
])
def test_every_family_is_registered(registry, name):
    register_all_modules()
    assert name in registry.module_dict, f'{name} is not registered in {registry.name}'
