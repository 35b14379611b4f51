"""Guided targets for spatial control (Gatys et al. 2017, Sec. 4 "Spatial control").

Style image r guides region r of the output: each style term's targets are the guided
Grams (or any kind's ``masked_targets``) of style image r inside its own mask, and the
output's region masks follow the network to every layer (:mod:`nstjax.masks`). The loss
side is in :func:`nstjax.objective.loss` (``masked_loss`` per region).
"""

from __future__ import annotations

import numpy as np

from nstjax import masks as masks_lib
from nstjax.errors import UsageError
from nstjax.objective import Objective, _reference_targets_jit, one_off


def _region_targets(obj, vgg_params, out_hw, styles, masks, style_masks) -> dict:
    """Spatial control: per style term, each region's guided target and the output's
    region masks at every layer (``{"regions": [...], "masks": {layer: RxH'xW'}}``)."""
    if len(masks) != obj.regions or len(styles) != obj.regions:
        raise UsageError(
            f"spatial control pairs style image r with mask r: got {len(styles)} style "
            f"images and {len(masks)} masks"
        )
    layers = tuple(
        dict.fromkeys(lay for i in obj.role_terms("style") for lay in obj.terms[i].layers)
    )
    out_masks = [masks_lib.layer_masks(m, layers, obj.mask_mode, obj.ceil_mode) for m in masks]
    stacked = {layer: np.stack([m[layer] for m in out_masks]) for layer in layers}
    per_region = []
    for r, style in enumerate(styles):
        hw = np.shape(style)[:2]
        sm = style_masks[r] if style_masks is not None and style_masks[r] is not None else None
        sm = np.ones(hw, np.float32) if sm is None else sm
        lm = masks_lib.layer_masks(sm, layers, obj.mask_mode, obj.ceil_mode)
        x = np.asarray(style, np.float32)[None]
        per_region.append(
            _reference_targets_jit(obj, obj.role_terms("style"), vgg_params, x, out_hw, lm)
        )
    return {
        i: {"regions": [p[i] for p in per_region], "masks": stacked}
        for i in obj.role_terms("style")
    }


def targets(obj: Objective, vgg_params, content_HxWx3, styles, masks, style_masks) -> dict:
    """``{style term index: {"regions": [{layer: target} per region], "masks": {layer:
    R x H' x W'}}}``; ``masks`` are the output's region masks (HxW, one per style
    image), ``style_masks`` each style image's own (None: the whole image)."""
    out_hw = tuple(np.shape(content_HxWx3)[:2])
    return _region_targets(one_off(obj), vgg_params, out_hw, styles, masks, style_masks)
