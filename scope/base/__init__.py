"""The bottom layer every other folder may use: atomic file writes, dtype names, the hub cache.

No torch at import time, no scope imports but `scope.errors`."""
