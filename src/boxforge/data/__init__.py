"""The dataset layer: every format is read into one `DatasetIndex`."""
