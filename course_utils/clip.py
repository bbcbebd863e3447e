"""CLIP: contrastive language-image pre-training and zero-shot classification (notebook 01).

The pieces, in the order the notebook derives them (torch only; device- and dtype-generic):

- ``clip_loss``: the symmetric cross-entropy (InfoNCE) over ``logit_scale * cos`` similarities,
  identical to open_clip's ``ClipLoss`` (``logit_scale`` is already exponentiated, as there);
  ``clip_loss_multi_positive``: the same when a text may describe several images of the batch;
- ``zero_shot_classifier`` / ``zero_shot_predict``: class embeddings averaged over prompt templates
  ("a photo of a {}.", ...), L2-normalized; prediction = argmax of the similarities (open_clip's
  ``build_zero_shot_classifier``);
- ``normalize_images``: CLIP's image normalization (open_clip's ``OPENAI_DATASET_MEAN`` / ``_STD``);
- ``recall_at_k``: image->text and text->image retrieval R@k read off a similarity matrix.

The course CLIP itself (a transformers ``CLIPModel`` trained on Shapes World) is built, trained,
saved and measured in ``course_utils.recipes.clip``; its open_clip layout is in
``course_utils.bridges.open_clip``; the DiffusionCLIP losses are in ``course_utils.diffusionclip``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

# CLIP's image normalization (open_clip's OPENAI_DATASET_MEAN / _STD).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Learnable temperature: logit_scale = ln(1 / 0.07) at init (exp = 14.29), clamped at ln(100).
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)

# Prompt templates for zero-shot classification (in the spirit of open_clip's SIMPLE_IMAGENET_TEMPLATES).
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
    "there is a {} in the image.",
)


# ============================================================================================
# Losses
# ============================================================================================
def check_2d(name: str, x: torch.Tensor) -> None:
    """Raise a ``ValueError`` unless ``x`` is a ``(batch, dim)`` tensor."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (batch, dim), got {shape}")


def check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, *, broadcast_b: bool = False) -> None:
    """Raise a ``ValueError`` naming both shapes unless ``a`` and ``b`` are ``(N, D)`` with the same
    ``N`` and ``D`` (with ``broadcast_b``, ``b`` may also be ``(1, D)``)."""
    check_2d(name_a, a)
    check_2d(name_b, b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {name_a} has shape {tuple(a.shape)} and {name_b} has shape "
                         f"{tuple(b.shape)}; both must be (batch, dim) with the same dim")
    if a.shape[0] != b.shape[0] and not (broadcast_b and b.shape[0] == 1):
        extra = " (or 1)" if broadcast_b else ""
        raise ValueError(f"batch sizes differ: {name_a} has shape {tuple(a.shape)} and {name_b} has shape "
                         f"{tuple(b.shape)}; {name_b} needs the same batch size{extra}")


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits_per_image, logits_per_text)``, both ``(N, N)``, as in open_clip's ``ClipLoss``."""
    check_pair("image_features", image_features, "text_features", text_features)
    # logits_per_image[i, j] = s * <I_i, T_j>   (features already L2-normalized: a cosine)
    logits_per_image = logit_scale * image_features @ text_features.T  # (N, N)
    # logits_per_text = logits_per_image^T
    logits_per_text = logit_scale * text_features @ image_features.T  # (N, N)
    return logits_per_image, logits_per_text


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric contrastive loss of CLIP (notebook 01); equal to ``open_clip.ClipLoss()``.

    ``image_features``, ``text_features``: ``(N, D)``, L2-normalized; row ``i`` of each is a pair.
    ``logit_scale``: the multiplier already exponentiated (``model.logit_scale.exp()``).

        L = 1/2 [ CE(s I T^T, arange(N)) + CE(s T I^T, arange(N)) ]
    """
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale)
    # the matching caption of image i is caption i: labels = 0, 1, ..., N-1
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    # image -> text and text -> image cross-entropies, averaged
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def clip_loss_multi_positive(image_features: torch.Tensor, text_features: torch.Tensor,
                             logit_scale: torch.Tensor | float, positives: torch.Tensor) -> torch.Tensor:
    """``clip_loss`` when a text may describe several images of the batch (partial descriptions,
    "a circle.", in the course CLIP's training; notebook 01): ``positives[i, j]`` says text j
    describes image i (the diagonal must be true). Each row's (and column's) cross-entropy uses as
    target the uniform distribution over its positives (as in UniCL); with ``positives = I`` it is
    ``clip_loss``.
    """
    check_pair("image_features", image_features, "text_features", text_features)
    n = image_features.shape[0]
    # (the diagonal can only be read on a device with data: not on "meta")
    if positives.shape != (n, n) or (positives.device.type != "meta" and not bool(positives.diagonal().all())):
        raise ValueError(f"positives must be a ({n}, {n}) boolean matrix with a true diagonal, "
                         f"got shape {tuple(positives.shape)}")
    # S_ij = s <I_i, T_j>
    logits = logit_scale * image_features @ text_features.T  # (N, N)
    p = positives.to(logits.dtype)
    # image -> text: targets uniform over the positives of row i; text -> image: of column j
    loss_i2t = -(p / p.sum(1, keepdim=True) * logits.log_softmax(dim=1)).sum(1).mean()
    loss_t2i = -(p / p.sum(0, keepdim=True) * logits.log_softmax(dim=0)).sum(0).mean()
    return (loss_i2t + loss_t2i) / 2


# ============================================================================================
# Zero-shot classification
# ============================================================================================
def zero_shot_classifier(encode_text: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                         templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
    """Zero-shot weights ``(D, C)`` (notebook 01), as open_clip's ``build_zero_shot_classifier``.

    For each class c: w_c = normalize( mean_t normalize(E_T(template_t(c))) ).
    ``encode_text(list_of_strings) -> (n, D)`` embeds texts (normalization is done here); the
    weights keep its device, in float32 unless it returns float64.
    """
    if not classnames:
        raise ValueError("zero_shot_classifier needs at least one class name")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates must be a non-empty list of strings with a '{{}}' slot, got {list(templates)!r}")
    texts = [t.format(c) for c in classnames for t in templates]
    with torch.no_grad():
        emb = encode_text(texts)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"encode_text returned shape {tuple(emb.shape)}; expected ({len(texts)}, D)")
    emb = emb.to(torch.promote_types(emb.dtype, torch.float32))  # low-precision embeddings: average in fp32
    emb = F.normalize(emb, dim=-1).reshape(len(classnames), len(templates), -1)  # (C, T, D)
    # average over templates, then normalize again
    weights = F.normalize(emb.mean(dim=1), dim=-1)  # (C, D)
    return weights.T.contiguous()  # (D, C)


def zero_shot_predict(image_features: torch.Tensor, classifier: torch.Tensor,
                      logit_scale: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predictions (N,), logits (N, C))``: logits = s * normalize(I) @ W, prediction = argmax
    (computed in the classifier's dtype)."""
    check_2d("image_features", image_features)
    check_2d("classifier", classifier)
    if image_features.shape[1] != classifier.shape[0]:
        raise ValueError(f"image_features has shape {tuple(image_features.shape)} but classifier has shape "
                         f"{tuple(classifier.shape)}; expected (N, D) and (D, C)")
    # logits_ic = s <I_i / |I_i|, w_c>
    logits = logit_scale * F.normalize(image_features.to(classifier.dtype), dim=-1) @ classifier  # (N, C)
    return logits.argmax(dim=-1), logits


# ============================================================================================
# Images and retrieval
# ============================================================================================
def normalize_images(images: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 or float in [0, 1] -> CLIP-normalized ``(N, 3, H, W)`` on the same
    device, in ``dtype`` (default: the images' float dtype, float32 for uint8)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if dtype is None:
        dtype = images.dtype if images.is_floating_point() else torch.float32
    # uint8 -> [0, 1], computed in float32 and cast at the end
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(OPENAI_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    # x' = (x - mean) / std, per channel
    return ((x - mean) / std).to(dtype)


def recall_at_k(similarity: torch.Tensor, k: int = 1, *, ids: torch.Tensor | None = None,
                gallery_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image->text R@k, text->image R@k)`` from a ``(N, N)`` similarity matrix whose diagonal
    holds the true pairs (image i, text i). Returns two 0-d tensors in ``similarity``'s dtype.

    A query is a hit when its partner is among the ``k`` most similar items. With ``ids`` (``(N,)``,
    e.g. caption ids equal for word-for-word equal captions) a retrieved item with the partner's id
    also counts as a hit. With ``gallery_size`` the N pairs are cut into consecutive galleries of
    that many pairs, each query searches only its own gallery, and R@k is averaged over galleries:
    R@k falls as the gallery grows (chance is k / gallery), so a fixed gallery makes the number a
    property of the model rather than of the test-set size.
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix, got shape {tuple(similarity.shape)}")
    n = similarity.shape[0]
    g = n if gallery_size is None else int(gallery_size)
    if g < 1 or n % g:
        raise ValueError(f"gallery_size {gallery_size} must divide the number of pairs {n}")
    if not 1 <= k <= g:
        raise ValueError(f"k must be between 1 and the gallery size {g}, got {k}")
    if ids is None:
        ids = torch.arange(n, device=similarity.device)
    elif ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {tuple(ids.shape)}")
    b = n // g
    # (b, g, g): the blocks on the diagonal, one gallery each
    blocks = similarity.reshape(b, g, b, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    ids = ids.reshape(b, g)

    def hits(s: torch.Tensor) -> torch.Tensor:  # s: (b, queries, gallery)
        top = s.argmax(dim=-1, keepdim=True) if k == 1 else s.topk(k, dim=-1).indices  # (b, g, k)
        found = torch.gather(ids[:, None, :].expand(b, g, g), 2, top)  # ids of the retrieved items
        # hit: the partner (or an item with its id) among the top k
        return (found == ids[:, :, None]).any(dim=-1).to(similarity.dtype).mean()

    return hits(blocks), hits(blocks.transpose(1, 2))
