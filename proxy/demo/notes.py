"""Demo notes MCP server over stdio: ``python -m proxy.demo.notes``.

Notes live in memory for the life of the process, so every client of one process
shares them and they vanish on exit.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from pydantic import Field

mcp = MCPServer(
    "notes",
    version="1.0.0",
    instructions="A scratchpad of titled text notes kept in memory.",
    log_level="WARNING",
)

# Insertion-ordered, so list_notes reports notes in the order they were first added.
NOTES: dict[str, str] = {}

Title = Annotated[str, Field(min_length=1, max_length=200, description="The note's title (its key).")]


@mcp.tool(description="Add a note, or replace the text of the note with the same title.")
def add_note(title: Title, text: Annotated[str, Field(description="The note's body.")]) -> str:
    replaced = title in NOTES
    NOTES[title] = text
    return f"{'Updated' if replaced else 'Added'} note {title!r}."


@mcp.tool(description="List the titles of all notes, oldest first.")
def list_notes() -> list[str]:
    return list(NOTES)


@mcp.tool(description="Return the text of the note with the given title.")
def read_note(title: Title) -> str:
    try:
        return NOTES[title]
    except KeyError:
        # ToolError becomes an isError result the model can read, not a protocol error.
        raise ToolError(f"No note titled {title!r}.") from None


@mcp.resource("notes://{title}", name="note", description="A note's text, by title.", mime_type="text/plain")
def note(title: str) -> str:
    try:
        return NOTES[title]
    except KeyError:
        raise ResourceNotFoundError(f"No note titled {title!r}.") from None


@mcp.prompt(description="Ask the model to summarise every note.")
def summarize_notes() -> str:
    if not NOTES:
        return "There are no notes yet. Say so briefly."
    body = "\n\n".join(f"## {title}\n{text}" for title, text in NOTES.items())
    return f"Summarise the following notes in a few bullet points:\n\n{body}"


if __name__ == "__main__":
    mcp.run()  # stdio; the SDK points fd 1 at stderr while serving, so stray prints cannot corrupt the wire
