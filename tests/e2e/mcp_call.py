"""Calls tools of `agent-vault mcp` in one session, through the Python `mcp`
package's stdio client (a client this project did not write).

    python3 mcp_call.py BIN DIR CALLS [SERVER_ARG...]

CALLS is a JSON list of [tool, arguments]; the server runs in DIR with this
process's environment (the agent's key in AGENT_VAULT_KEY). Prints one JSON
list: for each call, {"is_error": bool, "text": str}.
"""
import json
import os
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(bin_path, cwd, calls, extra):
    params = StdioServerParameters(
        command=bin_path, args=["mcp", *extra], env=dict(os.environ), cwd=cwd
    )
    results = []
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            for name, args in calls:
                r = await session.call_tool(name, args)
                text = "".join(
                    c.text for c in r.content if getattr(c, "type", "") == "text"
                )
                results.append({"is_error": bool(r.is_error), "text": text})
    return results


if __name__ == "__main__":
    bin_path, cwd, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(json.dumps(anyio.run(main, bin_path, cwd, calls, sys.argv[4:])))
