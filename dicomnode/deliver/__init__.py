"""Stage 3, deliver: results in the outbox are sent by C-STORE to their destinations, with retries."""
