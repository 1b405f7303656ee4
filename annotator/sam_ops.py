"""Device-side pieces of the SAM / SAM 2 segmenter: normalise, encode, prompt, decode (torch in, torch out).

Features of a batch of ``B`` images are a list of tensors with the image as first dimension: SAM / MobileSAM
``[image_embed (B, 256, 64, 64)]``; SAM 2 ``[image_embed (B, 256, 64, 64), feat_s0 (B, 32, 256, 256),
feat_s1 (B, 64, 128, 128)]`` (the high-resolution features the decoder adds while upscaling).

Nothing here reads a device value on the host: the box counts that group the boxes by image come from the
detections (host numpy), and per-box features are gathered with an index tensor.

Example (``model``: a loaded SAM 2, ``boxes_1024``: ``(N, 4)`` float32 boxes of image 0 in the input frame)::

    x = normalise(torch.zeros(1, 1024, 1024, 3, dtype=torch.uint8), *mean_std("cpu"))
    feats = encode(model, "sam2", x)  # [(1, 256, 64, 64), (1, 32, 256, 256), (1, 64, 128, 128)]
    masks, scores = decode_sam2(model, feats, boxes_1024, torch.zeros(len(boxes_1024), dtype=torch.long))
    masks.shape, scores.shape  # (N, 256, 256), (N,)
"""

from __future__ import annotations

from collections.abc import Sequence

from annotator.mask_upsample import SAM_INPUT_PX

_MEAN = (123.675, 116.28, 103.53)  # RGB, as Ultralytics' SAM predictor
_STD = (58.395, 57.12, 57.375)
_SAM2_FEAT_SIZES = [(SAM_INPUT_PX // 4,) * 2, (SAM_INPUT_PX // 8,) * 2, (SAM_INPUT_PX // 16,) * 2]


def mean_std(device):
    """``(1, 3, 1, 1)`` float32 mean and std on ``device`` (made once per segmenter: an upload syncs)."""
    import torch

    return (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (_MEAN, _STD))


def normalise(x_bhwc_uint8, mean, std):
    """``(B, 1024, 1024, 3)`` uint8 RGB (on the model's device) -> ``(B, 3, 1024, 1024)`` float32, contiguous NCHW.

    The same float operations as Ultralytics' SAM predictor (``(x - mean) / std`` on float32), so the encoder
    sees the very same input whatever the upload path.
    """
    t = x_bhwc_uint8.permute(0, 3, 1, 2).contiguous().float()
    return (t - mean) / std


def encode(model, family: str, batch) -> list:
    """Image encoder on ``batch`` ``(B, 3, 1024, 1024)``: the feature list described in the module docstring."""
    if family == "sam":
        return [model.image_encoder(batch)]
    backbone_out = model.forward_image(batch)
    _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    b = batch.shape[0]
    feats = [f.permute(1, 2, 0).reshape(b, -1, *hw) for f, hw in zip(vision_feats, _SAM2_FEAT_SIZES)]
    return [feats[-1], feats[0], feats[1]]


def cat_feats(parts: Sequence[list]) -> list:
    """Concatenate feature lists of consecutive image chunks along the image dimension."""
    import torch

    if len(parts) == 1:
        return list(parts[0])
    return [torch.cat(fs) for fs in zip(*parts)]


def sam2_box_prompts(prompt_encoder, boxes_1024):
    """SAM 2's prompt embedding of ``(N, 4)`` xyxy boxes (input-frame pixels) as labelled corner points 2 and 3.

    Equal, bit for bit, to ``prompt_encoder(points=(boxes.view(-1, 2, 2), [[2, 3]] * N), boxes=None,
    masks=None)`` (tested), but without its boolean-mask indexing by label (``emb[labels == k] += ...``),
    which reads the labels back on the host (a device sync on CUDA): the labels of a box prompt are fixed, so
    rows are indexed statically. Returns ``sparse (N, 3, C)`` (two corners + the padding point) and
    ``dense (N, C, 64, 64)``.
    """
    return static_label_prompts(prompt_encoder, boxes_1024.reshape(-1, 2, 2), (2, 3))


def static_label_prompts(prompt_encoder, points_1024, labels: tuple[int, ...]):
    """The prompt embedding of ``(N, K, 2)`` points (input-frame pixels) whose ``K`` labels are the same for every
    prompt (``(2, 3)``: a box's corners; ``(1,)``: one click on the object), plus SAM's padding point.

    Equal, bit for bit, to ``prompt_encoder(points=(points, [labels] * N), boxes=None, masks=None)`` (SAM, SAM 2,
    MobileSAM), but the labels index rows statically instead of by a boolean mask (``emb[labels == k] += ...``
    reads the labels back on the host: a device sync on CUDA). Returns ``sparse (N, K + 1, C)`` and
    ``dense (N, C, 64, 64)``.
    """
    import torch

    pe = prompt_encoder
    pts = points_1024 + 0.5  # pixel centres, as _embed_points
    k = pts.shape[1]
    pad = torch.zeros((pts.shape[0], 1, 2), dtype=pts.dtype, device=pts.device)
    emb = pe.pe_layer.forward_with_coords(torch.cat([pts, pad], dim=1), pe.input_image_size)
    emb[:, k] = 0.0  # the padding point (label -1)
    emb[:, k] += pe.not_a_point_embed.weight[0]
    for i, label in enumerate(labels):
        emb[:, i] += pe.point_embeddings[label].weight[0]
    sparse = emb.to(pe.point_embeddings[0].weight.dtype)
    h, w = pe.image_embedding_size
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(sparse.shape[0], -1, h, w)
    return sparse, dense


def decode_sam2(model, feats: list, boxes_1024, img_idx, *, one_image: int | None = None):
    """SAM 2 decoder once for ``N`` boxes of several images: each box gets its image's features via ``img_idx``.

    Args:
        feats: SAM 2 feature list of ``B`` images.
        boxes_1024: ``(N, 4)`` float32 xyxy boxes in the 1024 px input frame.
        img_idx: ``(N,)`` int64 image of each box (indices into ``feats``).
        one_image: the feature row of every box when the caller knows (host) that they all share one: the
            high-resolution features are then broadcast instead of gathered per box (same values).

    Returns:
        ``(N, 256, 256)`` low-res logits and ``(N,)`` scores.
    """
    sparse, dense = sam2_box_prompts(model.sam_prompt_encoder, boxes_1024)
    return decode_embedded(model, "sam2", feats, sparse, dense, img_idx=img_idx, one_image=one_image)


def decode_one_image(model, family: str, feats: list, j: int, boxes_1024, *, reference: bool = False):
    """The decoder on the boxes of image ``j`` alone, with that image's features broadcast to its boxes.

    This is Ultralytics' own call (``repeat_image`` for SAM 2; SAM's ``MaskDecoder`` always repeats the image
    embedding, so SAM / MobileSAM decode image by image). ``reference=True`` also uses Ultralytics' SAM 2
    prompt encoder instead of :func:`sam2_box_prompts` (the per-image reference path of the tests).
    Returns ``(N, 256, 256)`` logits and ``(N,)`` scores.
    """
    if family == "sam" or reference:  # Ultralytics' own prompt encoding
        sparse, dense = embed_prompts(model, family, boxes_1024, True, None, None, None)
    else:
        sparse, dense = sam2_box_prompts(model.sam_prompt_encoder, boxes_1024)
    return decode_embedded(model, family, feats, sparse, dense, j=j)


def embed_prompts(model, family: str, boxes_1024, box_used: bool, points_1024, point_labels, masks_256):
    """Prompt embedding of ``n`` objects that share one layout: a box or not, ``k`` points each, a mask or not.

    Ultralytics' own encoding (``Predictor._prepare_prompts``): SAM 2 takes the box as two labelled corner
    points (2, 3) in front of the clicks and one ``points`` input; SAM / MobileSAM take ``points`` and ``boxes``
    apart. A mask prompt is SAM's ``mask_input``.

    Args:
        boxes_1024: ``(n, 4)`` xyxy in the 1024 px input frame (ignored unless ``box_used``).
        points_1024: ``(n, k, 2)`` float32 clicks in the input frame, or None (``k = 0``).
        point_labels: ``(n, k)`` int32, 1 on the object, 0 off it; or None.
        masks_256: ``(n, 1, 256, 256)`` float32 mask prompts in the letterboxed low-res frame, or None.

    Returns:
        ``sparse (n, T, C)`` and ``dense (n, C, 64, 64)``.
    """
    import torch

    if family == "sam":
        pts = (points_1024, point_labels) if points_1024 is not None else None
        return model.prompt_encoder(points=pts, boxes=boxes_1024 if box_used else None, masks=masks_256)
    pts, lab = points_1024, point_labels
    if box_used:
        corners = boxes_1024.reshape(-1, 2, 2)
        corner_labels = torch.tensor([[2, 3]], dtype=torch.int32, device=corners.device).expand(corners.shape[0], -1)
        pts = corners if pts is None else torch.cat([corners, pts], dim=1)
        lab = corner_labels if lab is None else torch.cat([corner_labels, lab], dim=1)
    return model.sam_prompt_encoder(points=(pts, lab), boxes=None, masks=masks_256)


def decode_embedded(
    model, family: str, feats: list, sparse, dense, *, img_idx=None, j: int | None = None, multimask: bool = False,
    one_image: int | None = None,
):
    """The mask decoder on embedded prompts: with image ``j``'s features broadcast (Ultralytics' per-image call),
    or each prompt with its own image's features gathered by ``img_idx`` (SAM 2's batched call).
    Returns ``(n, 256, 256)`` logits and ``(n,)`` scores; with ``multimask``, SAM's 3 masks per prompt,
    prompt-major: ``(3n, 256, 256)`` and ``(3n,)``. With ``img_idx``, ``one_image`` (every prompt's row, known on
    the host) broadcasts the high-resolution features instead of gathering a copy per prompt (~12 MB each in
    fp32): the decoder only adds them, so the values are the same."""
    if family == "sam":
        masks, scores = model.mask_decoder(
            image_embeddings=feats[0][j : j + 1],
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return masks.flatten(0, 1), scores.flatten(0, 1)
    if j is not None:
        embed, high = feats[0][j : j + 1], [f[j : j + 1] for f in feats[1:]]
        repeat = sparse.shape[0] > 1
    elif one_image is not None:
        embed = feats[0].index_select(0, img_idx)  # the decoder's per-prompt input: a copy per prompt anyway
        high = [f[one_image : one_image + 1] for f in feats[1:]]  # added by broadcasting: no copy
        repeat = False
    else:
        embed, *high = (f.index_select(0, img_idx) for f in feats)
        repeat = False
    masks, scores, _, _ = model.sam_mask_decoder(
        image_embeddings=embed,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=repeat,
        high_res_features=high,
    )
    return masks.flatten(0, 1), scores.flatten(0, 1)
