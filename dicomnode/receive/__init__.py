"""Stage 1, receive: the SCP and the web upload open intake sessions that spool and record each
instance; the series lifecycle owns its state, and the completion checker decides when it is whole."""
