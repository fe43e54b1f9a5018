"""The emulator: hosts (Docker containers or network namespaces) on a
bridge, kernel impairments per link (netem or the NFQUEUE daemon), and the
orchestration of one emulated run. Imports ``testbed.spec`` only; never the
simulator or the analysis, and never the guest's code (it starts the guest
by module name inside the host)."""
