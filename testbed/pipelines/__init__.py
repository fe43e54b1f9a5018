"""Pipelines that join the layers below for the CLI: ``evaluate`` (an
emulated run -> simulation -> verdict and report), ``calibrate`` (measure
the host model), ``power`` (how good the verdict is)."""
