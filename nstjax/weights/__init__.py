"""Readers and converters for pretrained VGG19 weight files."""
