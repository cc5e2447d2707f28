"""Optional integrations; each module needs its own extra and is imported explicitly."""
