"""The local stack's Python: one module per component, each with its start, check and stop, and the
modules that act on all of them. infra/stack.py is its command line; infra/README.md maps the modules.

Not an installed package: infra/stack.py finds it beside itself; tests/conftest.py and the benchmarks
that need it put infra/ on sys.path.
"""
