import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HACK = os.path.join(ROOT, "hack")
if HACK not in sys.path:
    sys.path.insert(0, HACK)
