"""Client-facing transports: each turns frames into calls on a ``Session`` and back."""
