"""Thespian actors of the message queue: Supervisor, ChannelActor, Timer, and the pure batching core."""
