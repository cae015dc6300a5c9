"""Readers and writers, one module a format. `detect.load_dataset` is the front door."""
