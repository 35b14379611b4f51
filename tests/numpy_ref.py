"""An independent float64 numpy implementation of VGG19 features and the Gatys loss.

Written directly from the paper's equations, sharing no code with nstjax: VGG19 with
average or max pooling (floor rounding, or Caffe's ceil rounding of odd maps), Gram
matrices, the four Gram normalizations, style targets rescaled to the output's
positions and blended over several style images, the content loss and total variation.
"""

from __future__ import annotations

import numpy as np

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
BLOCKS = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))


def conv3x3(x_HxWxC, kernel_HWIO, bias):
    h, w, _ = x_HxWxC.shape
    xp = np.pad(x_HxWxC, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, kernel_HWIO.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += xp[dy : dy + h, dx : dx + w, :] @ kernel_HWIO[dy, dx]
    return out + bias


def pool(x, kind, ceil=False):
    """2x2, stride 2. Floor: odd last rows/columns dropped. Ceil (Caffe): they form windows
    of their own; max over the valid elements, average over the valid elements only."""
    h, w, c = x.shape
    if not ceil:
        x = x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c)
        return x.max(axis=(1, 3)) if kind == "max" else x.mean(axis=(1, 3))
    out = np.zeros(((h + 1) // 2, (w + 1) // 2, c))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            window = x[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(-1, c)
            out[i, j] = window.max(axis=0) if kind == "max" else window.mean(axis=0)
    return out


def features(params, pixels_HxWx3, wanted, pooling="avg", ceil=False):
    """Activations (pre-ReLU 'conv', post-ReLU 'relu') for Caffe-preprocessed input."""
    x = pixels_HxWx3[..., ::-1].astype(np.float64) - CAFFE_MEAN_BGR
    out = {}
    for block, n in BLOCKS:
        for i in range(1, n + 1):
            p = params[f"conv{block}_{i}"]
            x = conv3x3(x, np.float64(p["kernel"]), np.float64(p["bias"]))
            out[f"conv{block}_{i}"] = x
            x = np.maximum(x, 0)
            out[f"relu{block}_{i}"] = x
            if all(k in out for k in wanted):
                return {k: out[k] for k in wanted}
        x = pool(x, pooling, ceil)
        out[f"pool{block}"] = x
    return {k: out[k] for k in wanted}


def gram(f_HxWxC):
    f = f_HxWxC.reshape(-1, f_HxWxC.shape[-1])
    return f.T @ f


def gatys_loss(params, x, content, style, content_layers, style_layers, alpha, beta, pooling="avg"):
    """alpha * sum_l w_l 1/2 sum (F-P)^2 + beta * sum_l w_l 1/(4 N^2 M^2) sum (G-A)^2."""
    fx = features(params, x, content_layers + style_layers, pooling)
    fc = features(params, content, content_layers, pooling)
    fs = features(params, style, style_layers, pooling)
    lc = sum(0.5 * np.sum((fx[k] - fc[k]) ** 2) for k in content_layers) / len(content_layers)
    ls = 0.0
    for k in style_layers:
        n = fx[k].shape[-1]
        m = fx[k].shape[0] * fx[k].shape[1]
        ls += np.sum((gram(fx[k]) - gram(fs[k])) ** 2) / (4.0 * n * n * m * m)
    ls /= len(style_layers)
    return alpha * lc + beta * ls


# Each Gram normalization as the factor on sum (G - A)^2 of unnormalized Grams, with N
# channels and M positions (the output's).
GRAM_NORM_FACTORS = {
    "gatys": lambda n, m: 1.0 / (4.0 * n**2 * m**2),  # Gatys et al. 2016, eq. 4
    "n": lambda n, m: 1.0 / n**2,  # Grams divided by N
    "hw": lambda n, m: 1.0 / m**2,  # Grams divided by M
    "chw": lambda n, m: 1.0 / (n**2 * m**2),  # Grams divided by N*M (Johnson et al.)
}


def positions(layer, h, w, ceil=False):
    """M: the number of positions of ``layer``'s output for an h x w image."""
    block = int(layer.removeprefix("pool").removeprefix("conv").removeprefix("relu")[0])
    halvings = block if layer.startswith("pool") else block - 1
    for _ in range(halvings):
        h, w = ((h + 1) // 2, (w + 1) // 2) if ceil else (h // 2, w // 2)
    return h * w


def style_targets(params, styles, blend, layers, out_hw, pooling="avg", ceil=False):
    """sum_s blend_s * G_s * M_out / M_s per layer: every style image's Gram rescaled to
    the output's positions, blended with the (already normalized) weights."""
    targets = {k: 0.0 for k in layers}
    for s, b in zip(styles, blend, strict=True):
        fs = features(params, np.float64(s), layers, pooling, ceil)
        for k in layers:
            m_s = fs[k].shape[0] * fs[k].shape[1]
            targets[k] = targets[k] + b * gram(fs[k]) * (positions(k, *out_hw, ceil) / m_s)
    return targets


def content_loss(fx, fc, layers, layer_weights):
    """sum_l w_l 1/2 sum (F - P)^2."""
    pairs = zip(layers, layer_weights, strict=True)
    return sum(w * 0.5 * np.sum((fx[k] - fc[k]) ** 2) for k, w in pairs)


def style_loss(fx, targets, layers, layer_weights, norm="gatys"):
    """sum_l w_l factor(N_l, M_l) sum (G_l - A_l)^2."""
    total = 0.0
    for k, w in zip(layers, layer_weights, strict=True):
        n, m = fx[k].shape[-1], fx[k].shape[0] * fx[k].shape[1]
        total += w * GRAM_NORM_FACTORS[norm](n, m) * np.sum((gram(fx[k]) - targets[k]) ** 2)
    return total


def tv_loss(x_HxWx3):
    """Total variation: squared differences of vertically and horizontally adjacent
    pixels, summed over positions and channels (pixel units)."""
    x = np.float64(x_HxWx3)
    return float(np.sum(np.diff(x, axis=0) ** 2) + np.sum(np.diff(x, axis=1) ** 2))
