"""Stage 1, receive: the SCP and the web upload hand instances to one intake, which spools and records them; the completion tracker decides when a series is whole."""
