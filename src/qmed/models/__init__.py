"""Models: the edge channel, 4->3 projection, segmenter, ladder nets, HQ-UNet, classifier, quantum layers."""
