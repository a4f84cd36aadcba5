"""Helpers shared by the tests, the local stack (hack/stack.py) and the benchmarks (hack/bench, hack/*.py):
loopback ports and waits, child processes, Envoy's bootstrap, stand-in pods, endpoints files, raw HTTP/1.1.

Installed with the project (`pip install -e .`, as hack/setup.sh does), so it imports the same way from
tests, scripts and `python -m hack.bench` with no sys.path edits. It starts epp, vllm-sim and epp-sidecar
as processes but imports neither package: the product never depends on it (the image does not ship it).
"""
