"""ttnet testbed: topology -> hosts -> links -> agents -> results.

Importing this package must stay cheap and stdlib-only: the agent
(``testbed.guest.agent``) runs inside bare ensemble containers that have only
python3 and ttnet's core. Heavy imports (docker, pyroute2, yaml, simpy,
matplotlib) live in the modules that need them.
"""
