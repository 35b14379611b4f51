"""Fast arbitrary style transfer (Ghiasi et al. 2017) with weights imported from ONNX.

    params = nstjax.arbitrary.load_params()          # fetched and converted once, cached
    out_Bx384x384x3 = nstjax.arbitrary.stylize_jit(params, contents_Bx384x384x3, styles)

Images are float32 NHWC in [0, 1]; one jitted call stylizes a whole batch.
"""

from nstjax.arbitrary.api import prepare_style, style_vector, stylize, transfer
from nstjax.arbitrary.run import stylize_jit, stylize_pixels
from nstjax.arbitrary.weights import fetch as fetch_params
from nstjax.arbitrary.weights import load as load_params

__all__ = [
    "fetch_params",
    "load_params",
    "prepare_style",
    "style_vector",
    "stylize",
    "stylize_jit",
    "stylize_pixels",
    "transfer",
]
