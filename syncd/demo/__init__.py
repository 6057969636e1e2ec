"""`syncd demo`: the Synapse demo world (data), a PostgreSQL server for it (server),
and a small application writing to the files (app)."""
