"""The simulator: the same topology and flows through ttnet's engine over
simpy links, with a model of the emulating host. Imports ``testbed.spec``
only; never the emulator or the analysis."""
