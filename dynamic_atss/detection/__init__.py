"""What a dense detector needs around its head: anchors and box coding, the combined-IoU assigner, loss
primitives, post-processing, and the head families (`heads/`), one module each."""
