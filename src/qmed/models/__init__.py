"""Models: the 4->3 projection, the segmenter, and (later) quantum layers and classifiers."""
