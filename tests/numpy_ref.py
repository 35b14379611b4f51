"""An independent float64 numpy implementation of VGG19 features and the Gatys loss.

Written directly from the paper's equations, sharing no code with nstjax.
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


def pool(x, kind):
    h, w, c = x.shape
    x = x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c)
    return x.max(axis=(1, 3)) if kind == "max" else x.mean(axis=(1, 3))


def features(params, pixels_HxWx3, wanted, pooling="avg"):
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
        x = pool(x, pooling)
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
