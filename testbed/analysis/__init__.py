"""What a run's events mean: per-flow statistics, emulated-vs-simulated
comparison tables and plots, and the fidelity verdict. Reads results;
never runs an emulation or a simulation. Imports ``testbed.spec`` only."""
