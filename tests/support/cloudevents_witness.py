"""A CloudEvents witness for the end-to-end tests: subscribes with nats-py (a client we did not
write) and parses every message with the Python CloudEvents SDK (a parser we did not write, v2,
strict: required attributes, RFC 3339 tz-aware time, extension names). One JSON line per
message goes to OUT: {"subject", "ok", "type" | "error"}.

    python3 cloudevents_witness.py URL USER PASSWORD OUT SUBJECT...   (empty USER: no auth)

Prints "witness.ready" once subscribed; stops on SIGTERM.
"""

import asyncio
import json
import signal
import sys

import nats
from cloudevents.core.formats.json import JSONFormat


async def main() -> None:
    url, user, password, out, *subjects = sys.argv[1:]
    options = {"servers": [url]}
    if user:
        options.update(user=user, password=password)
    client = await nats.connect(**options)
    parse = JSONFormat()
    sink = open(out, "a", encoding="utf-8")

    async def witness(message) -> None:
        record = {"subject": message.subject}
        try:
            event = parse.read(None, message.data)
            record.update(ok=True, type=event.get_type(), id=event.get_id())
        except Exception as error:  # every refusal is reported, never raised
            record.update(
                ok=False,
                error=f"{type(error).__name__}: {error}",
                payload=message.data[:400].decode("utf-8", "replace"),
            )
        sink.write(json.dumps(record) + "\n")
        sink.flush()

    for subject in subjects:
        await client.subscribe(subject, cb=witness)
    await client.flush()
    print("witness.ready", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await client.drain()
    sink.close()


asyncio.run(main())
