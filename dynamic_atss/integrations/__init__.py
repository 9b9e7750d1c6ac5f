"""Front doors from other libraries: `dynamic_atss.integrations.transformers` (Auto classes, image processor,
`pipeline("object-detection")`; needs `pip install "dynamic-atss[transformers]"`) and
`dynamic_atss.integrations.torchvision` (the combined-IoU assignment as a drop-in for torchvision's FCOS and
RetinaNet; no extra dependency)."""
