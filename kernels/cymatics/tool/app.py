"""TG.Cymatics — standing waves on a rectangular membrane, in Python.

    modes {"width": 0.3, "height": 0.2, "wave_speed": 340.0, "count": 5}
        -> {"modes": [{"m": 1, "n": 1, "frequency_hz": ..., "nodal_lines": 0}, ...]}

The (m, n) mode of a membrane fixed at its edges vibrates at
f = (c / 2) * sqrt((m / width)^2 + (n / height)^2); it has (m - 1) + (n - 1) nodal lines.
This kernel exists to prove the kernel contract is language-neutral: it is built by
componentize-py from the same WIT as the C kernels and served by the same host.
"""

import json
import math

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

MAX_COUNT = 1000


def fail(code: int, message: str):
    raise Err(types.KernelError(code=code, message=message))


def number(data: dict, key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        fail(400, f"`{key}` must be a positive number")
    return float(value)


def modes(data: dict) -> dict:
    width = number(data, "width", 1.0)
    height = number(data, "height", 1.0)
    speed = number(data, "wave_speed", 343.0)
    count = data.get("count", 10)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        fail(400, f"`count` must be a whole number from 1 to {MAX_COUNT}")
    # Enough (m, n) pairs to be sure the `count` lowest are among them.
    side = math.isqrt(count) + count
    found = []
    for m in range(1, side + 1):
        for n in range(1, side + 1):
            f = speed / 2.0 * math.sqrt((m / width) ** 2 + (n / height) ** 2)
            found.append((f, m, n))
    found.sort()
    return {
        "modes": [
            {"m": m, "n": n, "frequency_hz": round(f, 6), "nodal_lines": (m - 1) + (n - 1)}
            for f, m, n in found[:count]
        ]
    }


class Handler(exports.Handler):
    def handle(self, action: str, data: str, ctx: types.Context) -> str:
        if action != "modes":
            fail(404, "TG.Cymatics knows `modes`")
        try:
            request = json.loads(data)
        except ValueError as e:
            fail(400, f"data is not JSON: {e}")
        if not isinstance(request, dict):
            fail(400, "data must be a JSON object")
        result = modes(request)
        host.log(host.Level.DEBUG, f"computed {len(result['modes'])} modes")
        return json.dumps(result)
