"""Tables of stored chat history: one row per conversation, one row per turn of it.

``chat_conversations.turns`` is the conversation's version: a turn is appended as number ``turns + 1`` by
an update that also checks ``turns``, so two instances that ran a turn of the same conversation at once
cannot both add theirs (the second gets a conflict, never an interleaved history). ``chat_turns`` holds
each turn's messages (OpenAI-format JSON, starting with the user's message and ending with the answer),
so history is cut at turn boundaries and a tool result never travels without the call that asked for it.
Before a turn runs it claims its conversation (``busy_by`` with a lease), so a second turn of the same
conversation on another instance is refused before it calls a model or a tool.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, String, Table, Text

from persona.store.metadata import metadata

chat_conversations = Table(
    "chat_conversations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("persona", String(64), nullable=False),
    Column("user_id", String(254), nullable=False),
    Column("turns", Integer, nullable=False),  # turns stored so far: the version an append continues
    Column("busy_by", String(32)),  # the turn running now (a random id), claimed before it starts; or NULL
    Column("busy_until", DateTime(timezone=True)),  # its lease: a crashed instance's claim lapses then
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_chat_conversations_user_updated", chat_conversations.c.user_id, chat_conversations.c.updated_at)

chat_turns = Table(
    "chat_turns",
    metadata,
    Column("conversation_id", String(64), ForeignKey("chat_conversations.id"), primary_key=True),
    Column("turn", Integer, primary_key=True),  # 1, 2, ...; older ones are pruned past a bound
    Column("messages", Text, nullable=False),  # JSON list of the turn's messages (bounded)
    Column("created_at", DateTime(timezone=True), nullable=False),
)

__all__ = ["chat_conversations", "chat_turns"]
