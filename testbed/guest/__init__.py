"""What runs inside an emulated host (a container or a network namespace):
the ensemble agent and the latency probe. Stdlib + ttnet + ``testbed.spec``
only -- the image carries nothing else. Never imports the emulator, the
simulator or the analysis."""
