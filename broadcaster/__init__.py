"""The broadcast app.

A blank PROMETHEUS_MULTIPROC_DIR means unset. prometheus_client reads it once, when first
imported (by broadcaster/metrics.py), and would take "" for a folder: the current directory.
"""

import os

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR", "x").strip():
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]
