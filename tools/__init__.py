"""Build tools: wheels for the Pi (wheels.py), Debian trees for other architectures (debroot.py)."""
