"""HMR-style pose + shape discriminator (HaMeR's ``Discriminator``), used with an LSGAN objective."""
import torch
from torch import Tensor, nn

from opentad_lora.registry import MODELS


def _xavier(layer: nn.Module) -> nn.Module:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@MODELS.register_module()
class HaMeRDiscriminator(nn.Module):
    """Scores the realism of finger rotations and betas: 15 per-joint scores, 1 betas score, 1 all-joints score.

    Pose branch: ``D_conv1``/``D_conv2`` (1x1 convs over the 9 rotation entries of each joint), then one
    ``pose_out`` linear per joint and ``D_alljoints_fc1 -> D_alljoints_fc2 -> D_alljoints_out`` over all joints.
    Shape branch: ``betas_fc1 -> betas_fc2 -> betas_out``.

    Args:
        num_joints: Finger joints scored (MANO: 15).
        num_betas: Shape coefficients.
        conv_dim: Channels of the 1x1 convolutions (HaMeR: 32).
        fc_dim: Width of the all-joints MLP (HaMeR: 1024).
    """

    def __init__(self, num_joints: int = 15, num_betas: int = 10, conv_dim: int = 32, fc_dim: int = 1024) -> None:
        super().__init__()
        self.num_joints = num_joints
        self.relu = nn.ReLU()
        self.D_conv1 = _xavier(nn.Conv2d(9, conv_dim, kernel_size=1))
        self.D_conv2 = _xavier(nn.Conv2d(conv_dim, conv_dim, kernel_size=1))
        self.pose_out = nn.ModuleList([_xavier(nn.Linear(conv_dim, 1)) for _ in range(num_joints)])
        self.betas_fc1 = _xavier(nn.Linear(num_betas, 10))
        self.betas_fc2 = _xavier(nn.Linear(10, 5))
        self.betas_out = _xavier(nn.Linear(5, 1))
        self.D_alljoints_fc1 = _xavier(nn.Linear(conv_dim * num_joints, fc_dim))
        self.D_alljoints_fc2 = _xavier(nn.Linear(fc_dim, fc_dim))
        self.D_alljoints_out = _xavier(nn.Linear(fc_dim, 1))

    def forward(self, poses: Tensor, betas: Tensor) -> Tensor:
        """Score a batch.

        Args:
            poses: ``(B, num_joints, 3, 3)`` finger rotations (any shape with ``B * num_joints * 9`` values).
            betas: ``(B, num_betas)``.

        Returns:
            ``(B, num_joints + 2)`` scores.
        """
        poses = poses.reshape(-1, self.num_joints, 1, 9).permute(0, 3, 1, 2)
        feats = self.relu(self.D_conv2(self.relu(self.D_conv1(poses))))  # (B, C, J, 1)
        per_joint = [head(feats[:, :, j, 0]) for j, head in enumerate(self.pose_out)]
        shape = self.relu(self.betas_fc2(self.relu(self.betas_fc1(betas))))
        all_joints = feats.flatten(1)  # channel-major, as HaMeR's reshape(B, -1)
        all_joints = self.relu(self.D_alljoints_fc2(self.relu(self.D_alljoints_fc1(all_joints))))
        return torch.cat([*per_joint, self.betas_out(shape), self.D_alljoints_out(all_joints)], dim=1)
