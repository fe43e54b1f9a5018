"""The experiment's specification layer: what an experiment *is*.

Topology model, units, topology files, the flow plan, payloads, the event
schema and the small numeric helpers every other layer shares. It imports
only the standard library and pyyaml, never another ``testbed`` layer, so
the guest agent can carry it into a container.
"""
