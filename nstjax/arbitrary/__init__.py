"""Fast arbitrary style transfer (Ghiasi et al. 2017) with weights imported from ONNX."""
