"""Scripted conversation replay: load scenarios, run them for real (only the model is scripted), check."""
