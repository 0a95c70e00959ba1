"""bu_osprofiler: a fast Jaeger/OpenTracing-native drop-in replacement for OSProfiler."""
from bu_osprofiler import _core

__version__ = "0.1.0"
