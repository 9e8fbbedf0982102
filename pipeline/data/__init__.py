"""Data: readers of each data set's layout (file lists, arrays), image decoding, splits, and the loaders that feed
prepared arrays to fastai."""
