"""Stage 2, process: a complete series is routed, a job runs its pipeline, results go to the outbox."""
