"""A real MCP client (the Python `mcp` SDK, v2) for the end-to-end tests: starts COMMAND ARGS...
as an MCP server on stdio, lists its tools and calls each with no arguments. Prints one JSON
document: {"tools": [names], "answers": {name: {"is_error": bool, "json": [parsed text]}}}.

    python3 mcp_client.py COMMAND ARGS...
"""

import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main() -> None:
    command, *args = sys.argv[1:]
    server = StdioServerParameters(command=command, args=args)
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            report = {"tools": sorted(tool.name for tool in listed.tools), "answers": {}}
            for name in report["tools"]:
                result = await session.call_tool(name, arguments={})
                texts = [block.text for block in result.content if block.type == "text"]
                report["answers"][name] = {
                    "is_error": bool(result.is_error),
                    "json": [json.loads(text) for text in texts],
                }
    print(json.dumps(report))


asyncio.run(main())
