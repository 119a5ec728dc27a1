# The seed's federated CLIP-LoRA setup with Flower: ViT-B/32, LoRA r=8 / alpha 16 / dropout 0.05 on
# q/k/v/out_proj of both encoders, 3 local epochs, AdamW 1e-4 (wd 0.01), batch 32, FedAvg of A and B.
# Switch to the exact aggregations with --cfg-options federated.strategy=ffa (A frozen at lora.seed, B averaged) or
# federated.strategy=exact [federated.residual=base].
#   python tools/federated_train.py configs/clip/federated_vit_b32_fedavg.py
# Needs OpenAI's ViT-B-32.pt (or an HF CLIPModel safetensors), data_root/{train,val}/<class>/*, the BPE vocabulary
# (pip install --no-deps open-clip-torch) and pip install "flwr[simulation]".
data_root = 'data/my_dataset'
class_names = ['class one', 'class two']  # prompt words, in the order of the sorted class folders
targets = ['q_proj', 'k_proj', 'v_proj', 'out_proj']
model = dict(
    type='CLIPClassifier',
    clip=dict(type='ViTLoRA', arch='openai/clip-vit-base-patch32', pretrained='checkpoints/ViT-B-32.pt',
              lora=dict(enabled=True, r=8, alpha=16, dropout=0.05, seed=0,
                        vision=dict(target_modules=targets), text=dict(target_modules=targets))),
    class_names=class_names,
    templates=['a photo of a {}.'],
)
train_pipeline = [dict(type='LoadImage'), dict(type='CLIPRandomResizedCrop', size=224, scale=(0.5, 1.0)),
                  dict(type='PackClsInputs')]
test_pipeline = [dict(type='LoadImage'), dict(type='CLIPCenterCrop', size=224), dict(type='PackClsInputs')]
train_dataset = dict(type='ImageFolderDataset', data_root=data_root + '/train', pipeline=train_pipeline)
test_dataset = dict(type='ImageFolderDataset', data_root=data_root + '/val', pipeline=test_pipeline, test_mode=True)
optim_wrapper = dict(type='OptimWrapper', constructor='LoRAOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.01))
federated = dict(strategy='fedavg', residual='none', num_clients=10, num_rounds=20, local_epochs=3, batch_size=32,
                 fraction_fit=1.0, fraction_evaluate=0.0, partition=dict(type='dirichlet', alpha=0.5, seed=0), seed=0,
                 client_cpus=1)
