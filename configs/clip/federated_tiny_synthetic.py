# Federated LoRA on the tiny synthetic CLIP task, with Flower's simulation engine (Ray) or, with --superlink, its
# deployment engine (a SuperLink and SuperNodes; docs/clip.md, "Deployment"):
#   python tools/data/make_synthetic_clip.py --out data/synthetic_clip
#   python tools/federated_train.py configs/clip/federated_tiny_synthetic.py
#   python tools/federated_train.py configs/clip/federated_tiny_synthetic.py \
#       --cfg-options federated.strategy=exact federated.residual=base federated.partition.type=dirichlet
# Writes work_dirs/federated_tiny_synthetic/{history.json, accuracy.png, adapters/round_XXX/}.
_base_ = ['./clip_tiny_lora_synthetic.py']

train_dataset = dict(type='ImageFolderDataset', data_root='data/synthetic_clip/train',
                     pipeline={{_base_.train_pipeline}})
test_dataset = dict(type='ImageFolderDataset', data_root='data/synthetic_clip/val', pipeline={{_base_.test_pipeline}},
                    test_mode=True)
# A client's local optimiser (rebuilt every round; no scheduler across rounds).
optim_wrapper = dict(optimizer=dict(lr=5e-3, weight_decay=1e-2))
federated = dict(
    strategy='fedavg',  # 'fedavg' (A and B averaged apart, biased) | 'ffa' (A frozen, B averaged) | 'exact'
    residual='none',  # exact only: 'base' folds what rank r cannot hold into the frozen base weights
    num_clients=4,
    num_rounds=5,
    local_epochs=1,
    batch_size=16,
    fraction_fit=1.0,  # share of clients sampled per round
    fraction_evaluate=0.0,  # federated evaluation on the clients' data (the global accuracy is server-side)
    partition=dict(type='iid', alpha=0.5, seed=0),  # or type='dirichlet' (non-IID labels, smaller alpha = skewed)
    seed=0,
    # Faults: a round is aggregated from the clients that answered within round_timeout seconds (None: wait for all);
    # the clients that died or timed out count as failures. A round starts once min_available_clients SuperNodes are
    # connected and needs min_fit_clients of them (defaults: num_clients, and num_clients x fraction_fit).
    round_timeout=600,
    # min_available_clients=2, min_fit_clients=2,
    # Secure aggregation (Flower's SecAgg+; fedavg/ffa only): the server sees only the weighted sum of the updates,
    # quantised: values clipped to +-clipping_range, steps of 2 * clipping_range / quantization_range, client weights
    # n_k / max_weight (keep max_weight >= the largest client's sample count). Other keys: num_shares,
    # reconstruction_threshold, modulus_range (SecAggPlusWorkflow's arguments).
    secagg=dict(enabled=False, max_weight=64.0, clipping_range=8.0, quantization_range=2 ** 22),
    client_cpus=1,  # Ray CPUs per client actor (= parallel clients: ray_cpus // client_cpus)
    # ray_cpus=2,  # CPUs Ray may use (default: all)
)
