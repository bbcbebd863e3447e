"""DiffusionCLIP's CLIP losses (named in notebook 01, used to edit images in notebook 13).

Kim et al., *DiffusionCLIP* (CVPR 2022), ``losses/clip_loss.py`` (code base from StyleGAN-NADA's
``criteria/clip_loss.py``): ``clip_directional_loss`` and ``global_clip_loss``. Arguments are CLIP
embeddings ``(N, D)`` (any device and dtype); the losses are means over the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .clip import check_pair


def directional_clip_loss(img_gen: torch.Tensor, img_ref: torch.Tensor,
                          txt_tar: torch.Tensor, txt_ref: torch.Tensor) -> torch.Tensor:
    """DiffusionCLIP's directional loss, the mean over the batch of

        L_direction = 1 - <dI, dT> / (|dI| |dT|),  dI = E_I(x_gen) - E_I(x_ref),  dT = E_T(y_tar) - E_T(y_ref)

    Arguments are embeddings ``(N, D)``; the text ones may have batch 1 (one edit for the whole
    batch). DiffusionCLIP L2-normalizes each embedding before taking differences: pass normalized
    embeddings to reproduce it exactly.
    """
    check_pair("img_gen", img_gen, "img_ref", img_ref)
    check_pair("txt_tar", txt_tar, "txt_ref", txt_ref)
    check_pair("img_gen", img_gen, "txt_tar", txt_tar, broadcast_b=True)
    delta_i = img_gen - img_ref  # (N, D)
    delta_t = txt_tar - txt_ref  # (N or 1, D)
    # 1 - cos(dI, dT), averaged over the batch
    return (1 - F.cosine_similarity(delta_i, delta_t.expand_as(delta_i), dim=-1)).mean()


def global_clip_loss(img_gen: torch.Tensor, txt_tar: torch.Tensor) -> torch.Tensor:
    """DiffusionCLIP's global loss: mean over the batch of

        L_global = D_CLIP(x_gen, y_tar) = 1 - cos(E_I(x_gen), E_T(y_tar))

    ``img_gen`` ``(N, D)``; ``txt_tar`` ``(N, D)`` or ``(1, D)``.
    """
    check_pair("img_gen", img_gen, "txt_tar", txt_tar, broadcast_b=True)
    # 1 - cos(I, T), averaged over the batch
    return (1 - F.cosine_similarity(img_gen, txt_tar.expand_as(img_gen), dim=-1)).mean()
