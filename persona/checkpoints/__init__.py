"""Signed checkpoints of the audit log: a Merkle tree over its records, and C2SP signed notes.

``merkle`` hashes records into an RFC 6962 tree and proves inclusion and consistency; ``note`` writes and
reads checkpoints (origin, tree size, root) as C2SP signed notes with Ed25519. A checkpoint kept outside
the database lets anyone check that no record before it was changed, removed or re-chained, without the
database and without the master key. ``sinks`` hands each new checkpoint to a system outside the
database's reach (an HTTP endpoint, signed like the outbound webhook); ``publisher`` is the worker's
part: it signs a checkpoint when one is due and delivers each new one to the sink.

Errors: :class:`merkle.ProofError` and :class:`note.CheckpointError`, both
:class:`persona.errors.AuditIntegrityError`; :class:`sinks.SinkError` (a checkpoint could not be
delivered: the sink is unreachable, too slow or refused it) is a :class:`persona.errors.PersonaError` of
its own, since a sink being down says nothing about the log's integrity::

    PersonaError
    ├── AuditIntegrityError
    │   ├── merkle.ProofError
    │   └── note.CheckpointError
    └── sinks.SinkError
"""
