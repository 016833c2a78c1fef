"""History and resume: every broadcast numbered and kept in Redis (kept), what a connecting
client is owed (resume: one rule), and a server process's memory of the newest (recent)."""
