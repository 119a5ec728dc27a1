# CLIP-LoRA few-shot classification, tiny CLIP on synthetic PNGs (CPU, seconds). Make the data and the stand-in
# pretrained CLIP (a seeded tiny CLIP saved in OpenAI's checkpoint layout) first:
#   python tools/data/make_synthetic_clip.py --out data/synthetic_clip
#   python tools/train.py configs/clip/clip_tiny_lora_synthetic.py
#   python tools/test.py configs/clip/clip_tiny_lora_synthetic.py work_dirs/clip_tiny_lora_synthetic/epoch_8.pth
_base_ = [
    '../_base_/datasets/image_folder_cls.py',
    '../_base_/schedules/adamw_cosine.py',
    '../_base_/default_runtime.py',
    '../_base_/lora_runtime.py',
]

data_root = 'data/synthetic_clip'
# Prompt words of the synthetic classes, in label order (tools/data/make_synthetic_clip.py writes the same list to
# data_root/classnames.txt).
class_names = ['red horizontal stripes', 'green vertical stripes', 'cyan checker stripes', 'purple diagonal stripes']
lora_targets = ['q_proj', 'k_proj', 'v_proj', 'out_proj']
model = dict(
    type='CLIPClassifier',
    clip=dict(
        type='ViTLoRA',
        # The synthetic BPE file has 1024 ids (tools/data/make_synthetic_clip.py); real CLIPs use 49408.
        arch=dict(base='tiny', text=dict(vocab_size=1024)),
        pretrained=data_root + '/pretrained_clip_openai.pth',
        # The seed's per-encoder form; seed fixes the LoRA init (FFA-LoRA needs the same A on every client).
        lora=dict(enabled=True, r=4, alpha=8, dropout=0.0, seed=0,
                  vision=dict(target_modules=lora_targets), text=dict(target_modules=lora_targets)),
    ),
    class_names=class_names,
    templates=['a photo of {}.'],
    logit_scale=100.0,  # CLIP-LoRA's fixed scale (exp of the learned one is ~14 for a fresh CLIP)
    tokenizer=dict(bpe_path=data_root + '/bpe_tiny.txt'),
)

train_pipeline = [
    dict(type='LoadImage'),
    dict(type='CLIPRandomResizedCrop', size=32, scale=(0.5, 1.0)),
    dict(type='PackClsInputs'),
]
test_pipeline = [dict(type='LoadImage'), dict(type='CLIPCenterCrop', size=32), dict(type='PackClsInputs')]
train_dataloader = dict(
    batch_size=16,
    dataset=dict(type='FewShotImageFolder', data_root=data_root + '/train', num_shots=16, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root + '/val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='ClsAccuracy', topk=(1, 5))
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=1e-2, weight_decay=1e-2))
train_cfg = dict(max_epochs=8)
