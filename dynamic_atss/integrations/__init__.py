"""Front doors from other libraries: `dynamic_atss.integrations.transformers` (Auto classes, image processor,
`pipeline("object-detection")`; needs `pip install "dynamic-atss[transformers]"`)."""
