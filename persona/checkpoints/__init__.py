"""Signed checkpoints of the audit log: a Merkle tree over its records, and C2SP signed notes.

``merkle`` hashes records into an RFC 6962 tree and proves inclusion and consistency; ``note`` writes and
reads checkpoints (origin, tree size, root) as C2SP signed notes with Ed25519. A checkpoint kept outside
the database lets anyone check that no record before it was changed, removed or re-chained, without the
database and without the master key.

Errors: :class:`merkle.ProofError` and :class:`note.CheckpointError`, both
:class:`persona.errors.AuditIntegrityError`.
"""
