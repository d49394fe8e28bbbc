"""Read safetensors files with Hugging Face's `safetensors` (safe_open) and print, as JSON, each
tensor's dtype, shape and (for F32 and I64) the float64 sum of its values.

Usage: read_safetensors.py FILE...   (used by tests/checkpoint_python.rs)
"""

import json
import sys

from safetensors import safe_open


def main() -> None:
    out = {}
    for path in sys.argv[1:]:
        tensors = {}
        with safe_open(path, framework="np") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                entry = {"dtype": sl.get_dtype(), "shape": list(sl.get_shape())}
                if entry["dtype"] in ("F32", "I64"):
                    entry["sum"] = float(f.get_tensor(name).astype("float64").sum())
                tensors[name] = entry
            metadata = f.metadata()
        out[path] = {"tensors": tensors, "metadata": metadata}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
