"""The process group a run made is destroyed when the run ends (``tools/train.py``, ``tools/test.py``)."""
import socket

import torch.distributed as torch_dist

from opentad_lora.engine.ddp import release_process_group


def test_release_destroys_the_group_once_and_is_a_no_op_without_one():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    torch_dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        assert release_process_group() and not torch_dist.is_initialized()
        assert not release_process_group()
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
